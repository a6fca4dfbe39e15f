"""The floor: a bare ASGI app on daphne, no Channels, writing one pre-encoded frame to every socket.

Single process, so it is the ceiling for any daphne-based design: every join
adds the socket to a list; a publish encodes the broadcast once and sends it to all.
"""

import json

_sockets = {}  # topic -> {send: join_ref}


async def application(scope, receive, send):
    if scope["type"] != "websocket":
        return
    joined = []
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif event["type"] == "websocket.disconnect":
                return
            elif event["type"] == "websocket.receive":
                join_ref, ref, topic, name, payload = json.loads(event["text"])[:5]
                if name == "phx_join":
                    _sockets.setdefault(topic, {})[send] = json.dumps(join_ref)
                    joined.append(topic)
                elif name == "publish":
                    tail = "," + json.dumps([None, topic, payload[0], payload[1]], separators=(",", ":"))[1:]
                    for other, encoded_ref in list(_sockets.get(topic, {}).items()):
                        await other({"type": "websocket.send", "text": "[" + encoded_ref + tail})
                reply = [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}]
                await send({"type": "websocket.send", "text": json.dumps(reply)})
    finally:
        for topic in joined:
            _sockets.get(topic, {}).pop(send, None)
