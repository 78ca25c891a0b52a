"""A client of FLM-Audio's websocket protocol built as the official command-line client is:
sphn 0.1.4's Ogg-Opus writer and reader and the `websockets` package, audio sent in 1920-sample
(80 ms) blocks at real-time pace while the answers are read. Settings are posted first, as the
Gradio client does.

    python official_client.py --url ws://HOST:PORT/api/chat --input speech.wav --frames 40 \
        [--settings http://HOST:PORT/api/settings]

Prints one JSON line: whether the handshake came first, the settings' answer, the Ogg pages
received, the length and RMS of what sphn's reader decoded of them, and the text received. Exits non-zero when the protocol is broken.
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

        async def recv_loop():
            # The server sends two header pages, then one page per frame received. (sphn's
            # reader holds back the pre-skip and the last packets, so counting its samples
            # would wait for ever.)
            while pages[0] < 2 + len(clip):
                msg = await asyncio.wait_for(ws.recv(), timeout=10)
                kind, payload = msg[0], msg[1:]
                if kind == 1:
                    pages[0] += 1
                    reader.append_bytes(payload)
                    pcm = reader.read_pcm()
                    if pcm.shape[-1] > 0:
                        reply.append(pcm)
                elif kind == 2:
                    text.append(payload.decode("utf-8"))

        await asyncio.gather(send_loop(), recv_loop())
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
