"""A client of FLM-Audio's websocket protocol built as the official command-line client is:
sphn 0.1.4's Ogg-Opus writer and reader and the `websockets` package, audio sent in 1920-sample
(80 ms) blocks at real-time pace while the answers are read. Settings are posted first, as the
Gradio client does.

    python official_client.py --url ws://HOST:PORT/api/chat --input speech.wav --frames 40 \
        [--settings http://HOST:PORT/api/settings]

Prints one JSON line: whether the handshake came first, the settings' answer, the Ogg pages
received (everything the server sent until it had been quiet for 3 s after the last frame went
out), the length and RMS of what sphn's reader decoded of them, and the text received. Exits
non-zero when the protocol is broken.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request
import wave

import numpy as np
import sphn
import websockets

FRAME = 1920
# Seconds without a message after the last frame was sent: the server has answered all.
QUIET = 3.0


def read_clip(path, frames):
    with wave.open(path) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    # Looped when a longer conversation is asked for (a soak).
    x = np.tile(x, frames * FRAME // len(x) + 1)
    return (x[: frames * FRAME].astype(np.float32) / 32768.0).reshape(frames, FRAME)


def post_settings(url):
    body = json.dumps({"temp_text": 0.01, "top_p_text": 1.0, "top_k_text": 0,
                       "temp_audio": 0.1, "top_p_audio": 0.9, "top_k_audio": 0,
                       "repetition_penalty_text": 1.1, "repetition_penalty_window_text": 50,
                       "repetition_penalty_audio": 1.2, "repetition_penalty_window_audio": 50})
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["status"]


async def converse(url, clip):
    writer = sphn.OpusStreamWriter(24000)
    reader = sphn.OpusStreamReader(24000)
    reply = []
    text = []
    pages = [0]
    async with websockets.connect(url, max_size=None) as ws:
        first = await asyncio.wait_for(ws.recv(), timeout=5)
        handshake = first == b"\x00"

        async def send_loop():
            start = time.monotonic()
            for i, block in enumerate(clip):
                writer.append_pcm(block)
                while True:
                    msg = writer.read_bytes()
                    if len(msg) == 0:
                        break
                    await ws.send(b"\x01" + msg)
                await asyncio.sleep(max(0.0, start + (i + 1) * 0.08 - time.monotonic()))

        sent = asyncio.Event()

        async def recv_loop():
            # Everything the server sends, until it has been quiet for QUIET seconds after the
            # last frame went out: the count is the server's, not a number this client
            # stops at.
            while True:
                try:
                    msg = await asyncio.wait_for(ws.recv(), timeout=QUIET if sent.is_set() else 10)
                except asyncio.TimeoutError:
                    if sent.is_set():
                        return
                    raise
                kind, payload = msg[0], msg[1:]
                if kind == 1:
                    pages[0] += 1
                    reader.append_bytes(payload)
                elif kind == 2:
                    text.append(payload.decode("utf-8"))

        async def send_then_mark():
            await send_loop()
            sent.set()

        await asyncio.gather(send_then_mark(), recv_loop())
    # sphn's reader decodes on a thread of its own and hands out one chunk per call: read
    # until it has had nothing more for a second.
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        pcm = reader.read_pcm()
        if pcm.shape[-1] > 0:
            reply.append(pcm)
            quiet_since = time.monotonic()
        else:
            time.sleep(0.01)
    pcm = np.concatenate(reply) if reply else np.zeros(0, dtype=np.float32)
    return handshake, pcm, text, pages[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--settings")
    a = ap.parse_args()
    status = post_settings(a.settings) if a.settings else None
    handshake, pcm, text, pages = asyncio.run(converse(a.url, read_clip(a.input, a.frames)))
    print(json.dumps({
        "handshake": handshake,
        "pages": pages,
        "settings": status,
        "reply_samples": int(pcm.shape[-1]),
        "reply_rms": float(np.sqrt(np.mean(pcm ** 2))) if pcm.size else 0.0,
        "text": "".join(text),
        "sphn": sphn.__version__ if hasattr(sphn, "__version__") else "0.1.4",
    }))
    return 0 if handshake else 1


if __name__ == "__main__":
    sys.exit(main())
