"""Simulated rooms for the echo-cancellation tests: a loudspeaker 8 cm from the microphone
in shoebox rooms (pyroomacoustics' image method, absorption from Sabine's formula for the
given reverberation time), the loudspeaker's sound reaching the microphone with an extra
delay (the devices' buffers), plus noise.

    python rooms.py SPEECH.wav OUT_DIR

Writes, at 24 kHz: far.wav (what the loudspeaker plays: the clip twice, 22 s), and for each
room mic-N.wav (its echo and noise: echo only), near.wav (another voice: the clip reversed
in time, from 8 s to 16 s) and dt-N.wav (echo, noise and the near voice: double talk), and
rooms.json (each room's parameters and the versions used). Also: moved.wav, the echo in room
1 with the loudspeaker moved 0.5 m at 11 s (the impulse response changes mid-clip); and
rir-1-16k.npy, room 1's impulse response at 16 kHz (0.3 s, float32), for the closed loop
through the daemon's devices (tests/echo_loop.rs). Seeded: the same files each run.
"""

import json
import sys
import wave

import numpy as np
import pyroomacoustics as pra
import scipy

RATE = 24_000
ROOMS = [  # reverberation time (s), extra delay (ms), room size (m)
    (0.2, 10, [4.0, 3.0, 2.5]),
    (0.4, 60, [6.0, 5.0, 3.0]),
    (0.6, 150, [8.0, 6.0, 3.2]),
]


def read(path):
    with wave.open(path) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0


def save(path, y):
    y = np.clip(y, -1.0, 1.0)
    with wave.open(path, "wb") as o:
        o.setnchannels(1)
        o.setsampwidth(2)
        o.setframerate(RATE)
        o.writeframes((y * 32767).astype(np.int16).tobytes())


def room_echo(far, dims, rt60, source, fs=RATE):
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=fs, materials=pra.Material(absorption), max_order=max_order)
    room.add_source(source, signal=far)
    room.add_microphone([1.58, 1.5, 1.2])
    room.simulate()
    return room


def main(speech, out):
    rng = np.random.default_rng(7)
    x = read(speech)
    far = np.concatenate([x, x])
    save(f"{out}/far.wav", far)
    near = np.zeros(len(far))
    seg = x[::-1][: 8 * RATE]
    near[8 * RATE : 8 * RATE + len(seg)] = seg / np.max(np.abs(seg)) * 0.4
    save(f"{out}/near.wav", near)
    rooms = []
    for i, (rt60, delay_ms, dims) in enumerate(ROOMS):
        absorption, max_order = pra.inverse_sabine(rt60, dims)
        room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(absorption), max_order=max_order)
        room.add_source([1.5, 1.5, 1.2], signal=far)
        room.add_microphone([1.58, 1.5, 1.2])
        room.simulate()
        echo = room.mic_array.signals[0][: len(far)]
        echo = echo / np.max(np.abs(echo)) * 0.5
        d = RATE * delay_ms // 1000
        echo = np.concatenate([np.zeros(d), echo])[: len(far)]
        noise = rng.normal(0.0, 10 ** (-60 / 20), len(far))
        save(f"{out}/mic-{i}.wav", echo + noise)
        save(f"{out}/dt-{i}.wav", echo + noise + near)
        rooms.append({"rt60_s": rt60, "delay_ms": delay_ms, "size_m": dims,
                      "rt60_measured_s": float(room.measure_rt60()[0][0])})
    # Room 1, the loudspeaker moved 0.5 m at 11 s: each half through its own position.
    rt60, delay_ms, dims = ROOMS[1]
    cut = 11 * RATE
    a = room_echo(far, dims, rt60, [1.5, 1.5, 1.2]).mic_array.signals[0][: len(far)]
    b = room_echo(far, dims, rt60, [1.5, 2.0, 1.2]).mic_array.signals[0][: len(far)]
    scale = 0.5 / np.max(np.abs(a))
    moved = np.concatenate([a[:cut], b[cut : len(far)]]) * scale
    d = RATE * delay_ms // 1000
    moved = np.concatenate([np.zeros(d), moved])[: len(far)]
    save(f"{out}/moved.wav", moved + rng.normal(0.0, 10 ** (-60 / 20), len(far)))
    # Room 1's impulse response at 16 kHz, 0.3 s.
    impulse = np.zeros(16_000)
    impulse[0] = 1.0
    room = room_echo(impulse, dims, rt60, [1.5, 1.5, 1.2], fs=16_000)
    rir = room.rir[0][0][: 16_000 * 3 // 10]
    np.save(f"{out}/rir-1-16k.npy", (rir / np.max(np.abs(rir))).astype(np.float32))
    with open(f"{out}/rooms.json", "w") as f:
        json.dump({"rooms": rooms, "pyroomacoustics": pra.__version__, "numpy": np.__version__,
                   "scipy": scipy.__version__, "seed": 7}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
