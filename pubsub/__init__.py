"""DPS: Phoenix Channels over Django Channels, with topics owned on a consistent hash ring."""
