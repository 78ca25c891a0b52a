"""Simulated rooms for the echo-cancellation tests: a loudspeaker 8 cm from the microphone
in shoebox rooms (pyroomacoustics' image method, absorption from Sabine's formula for the
given reverberation time), the loudspeaker's sound reaching the microphone with an extra
delay (the devices' buffers), plus noise.

    python rooms.py SPEECH.wav OUT_DIR [MODEL_REPLY.wav]

Writes, at 24 kHz: far.wav (what the loudspeaker plays: the clip twice, 22 s), and for each
room mic-N.wav (its echo and noise: echo only), near.wav (another voice: the clip reversed
in time, from 8 s to 16 s) and dt-N.wav (echo, noise and the near voice: double talk), and
rooms.json (each room's parameters and the versions used). Also: moved.wav, the echo in room
1 with the loudspeaker moved 0.5 m at 11 s (the impulse response changes mid-clip); and
rir-1-16k.npy, room 1's impulse response at 16 kHz (0.3 s, float32), for the closed loop
through the daemon's devices (tests/echo_loop.rs). Seeded: the same files each run.

Given MODEL_REPLY.wav (the random small model's answer, which the closed loop plays: loud,
unbroken noise-like audio), also the harder rooms of MORE, all in room 1 (0.4 s, 60 ms), each
as mic-NAME.wav (echo and noise), dt-NAME.wav (with the same near voice from 8 s to 16 s) and
echo-NAME.wav (the echo alone, to tell its part of an output from the noise's):

  small   a small loudspeaker that distorts: the far end high-passed (2nd-order Butterworth,
          400 Hz) and soft-clipped (tanh, drive 2: the part of the loudspeaker's output that no
          linear filter of the far end explains is -17 dB) before the room; the reference
          stays what was sent
  fan     a noisy room: fan noise (pink, with the blades' hum at 100 and 200 Hz) at -45 dBFS
  louder  the volume turned up 10 dB at 11 s (over 0.3 s) after the reference: the echo path
          10 dB louder from there, the canceller's reference unchanged
  tts     speech with pauses as the far end (far-tts.wav): espeak-ng's sentences, 0.6-2.5 s
          of silence between them
  model   the model's noise as the far end (far-model.wav: MODEL_REPLY.wav repeated to 22 s)

rooms.json then lists them under "more" with the far end each uses.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np
import pyroomacoustics as pra
import scipy
import scipy.io.wavfile
import scipy.signal

RATE = 24_000
ROOMS = [  # reverberation time (s), extra delay (ms), room size (m)
    (0.2, 10, [4.0, 3.0, 2.5]),
    (0.4, 60, [6.0, 5.0, 3.0]),
    (0.6, 150, [8.0, 6.0, 3.2]),
]


def read(path, rate=RATE):
    with wave.open(path) as w:
        assert w.getframerate() == rate and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0


def read_any(path):
    """A mono 16-bit or 32-bit float WAV at 24 kHz (what `flm-edge run` writes)."""
    rate, x = scipy.io.wavfile.read(path)
    assert rate == RATE and x.ndim == 1, (rate, x.shape)
    return x.astype(np.float64) / (32768.0 if x.dtype == np.int16 else 1.0)


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


def main(speech, out, model_reply=None):
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
    info = {"rooms": rooms, "pyroomacoustics": pra.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "seed": 7}
    if model_reply is not None:
        info["more"] = more_rooms(far, near, read_any(model_reply), out)
        info["espeak-ng"] = subprocess.run(["espeak-ng", "--version"], capture_output=True,
                                           text=True, check=True).stdout.strip()
    with open(f"{out}/rooms.json", "w") as f:
        json.dump(info, f, indent=1)


# Sentences a kiosk says, each spoken by espeak-ng, with pauses between them.
SENTENCES = [
    "Welcome to the museum.",
    "The next tour starts in ten minutes, at the main entrance.",
    "Can I help you find something?",
    "The cafe is on the second floor, next to the shop.",
    "Please keep your ticket with you.",
    "Photos are allowed without a flash.",
    "Thank you, and enjoy your visit.",
]


def tts_far(n, rng):
    """Speech with pauses, `n` samples at 24 kHz: espeak-ng (its output, 22.05 kHz, is
    deterministic for a given version) resampled, sentences 0.6-2.5 s apart."""
    if shutil.which("espeak-ng") is None:
        sys.exit("rooms.py: espeak-ng is missing (the speech-with-pauses far end): install it "
                 "(.ci/install-deps does)")
    y = np.zeros(n)
    at = int(0.5 * RATE)
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        while at < n:
            path = f"{tmp}/s.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", path,
                            SENTENCES[k % len(SENTENCES)]], check=True)
            x = scipy.signal.resample_poly(read(path, 22_050), 160, 147)
            x = x / np.max(np.abs(x)) * 0.8
            end = min(n, at + len(x))
            y[at:end] = x[: end - at]
            at = end + int(rng.uniform(0.6, 2.5) * RATE)
            k += 1
    return y


def fan_noise(n, rng, dbfs):
    """Fan noise: pink noise (1/f power) with the blades' hum at 100 and 200 Hz, `dbfs` RMS."""
    spec = np.fft.rfft(rng.normal(0.0, 1.0, n))
    f = np.fft.rfftfreq(n, 1.0 / RATE)
    spec[1:] /= np.sqrt(f[1:] / 20.0).clip(1.0, None)
    spec[0] = 0.0
    pink = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE
    hum = np.sin(2 * np.pi * 100 * t) + 0.5 * np.sin(2 * np.pi * 200 * t + 1.0)
    pink /= np.sqrt(np.mean(pink**2))
    hum /= np.sqrt(np.mean(hum**2))
    y = pink + 0.3 * hum
    return y / np.sqrt(np.mean(y**2)) * 10 ** (dbfs / 20)


def small_speaker(x):
    """A small loudspeaker driven hard: no bass (400 Hz high-pass), soft clipping."""
    sos = scipy.signal.butter(2, 400, "highpass", fs=RATE, output="sos")
    y = scipy.signal.sosfilt(sos, x)
    y = y / np.max(np.abs(y))
    drive = 2.0
    return np.tanh(drive * y) / np.tanh(drive)


def more_rooms(far, near, reply, out):
    rng = np.random.default_rng(8)
    n = len(far)
    rt60, delay_ms, dims = ROOMS[1]
    d = RATE * delay_ms // 1000

    def echo_of(played):
        e = room_echo(played, dims, rt60, [1.5, 1.5, 1.2]).mic_array.signals[0][:n]
        return np.concatenate([np.zeros(d), e])[:n]

    def noise():
        return rng.normal(0.0, 10 ** (-60 / 20), n)

    rooms = []

    def room(name, far_file, echo, extra, what, **more):
        save(f"{out}/echo-{name}.wav", echo)
        save(f"{out}/mic-{name}.wav", echo + extra)
        save(f"{out}/dt-{name}.wav", echo + extra + near)
        rooms.append({"name": name, "far": far_file, "what": what, **more})

    base = echo_of(far)
    scale = 0.5 / np.max(np.abs(base))
    # A small loudspeaker: what reaches the room is no longer the reference; how far from it
    # (the part of the loudspeaker's output no linear filter of the far end explains).
    played = small_speaker(far)
    a, res, *_ = np.linalg.lstsq(np.stack([far, scipy.signal.sosfilt(
        scipy.signal.butter(2, 400, "highpass", fs=RATE, output="sos"), far)], 1), played,
        rcond=None)
    nonlinear = 10 * np.log10(res[0] / np.sum(played**2))
    e = echo_of(played)
    room("small", "far.wav", e / np.max(np.abs(e)) * 0.5, noise(),
         "a small loudspeaker that distorts: 400 Hz high-pass, soft clipping",
         nonlinear_db=float(nonlinear))
    room("fan", "far.wav", base * scale, noise() + fan_noise(n, rng, -45.0),
         "fan noise at -45 dBFS")
    # The volume knob, after the reference: 10 dB more from 11 s, over 0.3 s (in dB).
    gain_db = np.clip((np.arange(n) / RATE - 11.0) / 0.3, 0.0, 1.0) * 10.0
    room("louder", "far.wav", base * scale / 10 ** 0.5 * 10 ** (gain_db / 20), noise(),
         "the volume turned up 10 dB at 11 s")
    tts = tts_far(n, rng)
    save(f"{out}/far-tts.wav", tts)
    e = echo_of(tts)
    room("tts", "far-tts.wav", e / np.max(np.abs(e)) * 0.5, noise(),
         "speech with pauses (espeak-ng) as the far end",
         speech_fraction=float(np.mean(np.abs(tts) > 1e-3)))
    model = np.tile(reply, n // len(reply) + 1)[:n]
    save(f"{out}/far-model.wav", model)
    e = echo_of(model)
    room("model", "far-model.wav", e / np.max(np.abs(e)) * 0.5, noise(),
         "the random small model's noise as the far end")
    return rooms


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
