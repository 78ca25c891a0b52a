#!/usr/bin/env python3
"""The sound card's clock at the far ends of two named pipes, for a paced run of
`flm-edge serve` through alsa-lib without sound hardware.

serve's capture and playback PCMs are alsa-lib `file` plugins (slave `null`) whose input and
output files are the pipes CAPTURE and PLAYBACK (see soak.sh). This process writes the
user's voice into CAPTURE and reads the reply out of PLAYBACK one 20 ms period at a time by
the monotonic clock, as a card at RATE Hz (mono s16) would. The voice (a 24 kHz mono s16
WAV, each sample repeated RATE/24000 times) is followed by silence until SIGTERM; the
reply is appended to OUTPUT as raw s16.

    alsa_clock.py RATE VOICE.wav CAPTURE PLAYBACK OUTPUT
"""
import fcntl, os, signal, sys, threading, time, wave

F_SETPIPE_SZ = 1031
PERIOD = 0.020

rate, voice, cap, play, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
assert rate % 24000 == 0, "RATE must be a multiple of 24000"
w = wave.open(voice)
assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2), voice
clip = w.readframes(w.getnframes())
rep = rate // 24000
pcm = bytearray(len(clip) * rep)
for r in range(rep):
    pcm[2 * r::2 * rep] = clip[0::2]
    pcm[2 * r + 1::2 * rep] = clip[1::2]
chunk = int(rate * PERIOD) * 2
silence = bytes(chunk)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())


def feed():
    fd = os.open(cap, os.O_WRONLY)  # waits for serve to open the capture PCM
    t0, k = time.monotonic(), 0
    while not stop.is_set():
        d = t0 + k * PERIOD - time.monotonic()
        if d > 0:
            time.sleep(d)
        part = pcm[k * chunk:(k + 1) * chunk]
        try:
            os.write(fd, part if len(part) == chunk else silence)
        except BrokenPipeError:  # serve closed the PCM (a probe, a reopen): wait for it
            os.close(fd)
            if stop.is_set():
                return
            fd = os.open(cap, os.O_WRONLY)
        k += 1


def drain():
    with open(out, "ab") as f:
        while not stop.is_set():
            fd = os.open(play, os.O_RDONLY)  # waits for serve to open the playback PCM
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
            except OSError:
                pass
            t0, k = time.monotonic(), 0
            while True:
                d = t0 + k * PERIOD - time.monotonic()
                if d > 0:
                    time.sleep(d)
                left, got = chunk, b""
                while left:
                    b = os.read(fd, left)
                    if not b:
                        break
                    got += b
                    left -= len(b)
                f.write(got)
                if left:
                    break  # serve closed the PCM
                k += 1
            os.close(fd)


threading.Thread(target=drain, daemon=True).start()
threading.Thread(target=feed, daemon=True).start()
while not stop.is_set():
    stop.wait(1)
