"""``manage.py dpsverify``: a workload against a running DPS, and a checker of its delivery promise.

- ``plan``: which subscriber joins which topic on which URL, and which publisher socket sends which id
- ``workload``: the sockets (subscribers that reconnect and recover, publishers under the rate limit)
- ``checker``: what they saw -> per topic accepted, lost, duplicated, reordered, refused, latency
- ``report``: the table and the last line
"""
