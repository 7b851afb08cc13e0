#!/usr/bin/env python3
"""Writes and checks the test tones (1 kHz by default) of the baresip interop tests, with
python3's standard library only (see README.md beside this file).

    tone.py write OUT.wav SECONDS [HZ]  8 kHz mono S16LE, HZ (default 1000) sine at -6 dBFS:
                                        what baresip 1.0.0's aufile source needs for PCMU/PCMA
                                        (8000 Hz, 1 channel, s16)
    tone.py check IN.wav [HZ]           exit 0 if a HZ (default 1000) tone is present for >= 1 s
                                        in total (MIN_SECONDS), printing its relative energy;
                                        else exit 1 with the reason

Giving each side its own frequency (say 1000 Hz from the caller, 600 Hz from the callee) proves
which way the audio went: a file that merely echoed the local source would fail the check.

The check cuts the file into 20 ms blocks and runs a Goertzel filter at HZ on each: a block
"has the tone" when it is not silent (RMS >= SILENCE_RMS) and the HZ bin holds at least
TONE_FRACTION of the block's energy. G.711 round trips keep well over 90 % of the energy in
that bin; silence, comfort noise or the wrong tone give far less. A WAV whose writer was
killed before finalising its header (sizes left at 0) is read to its end all the same.
"""
import math
import struct
import sys
import wave

FREQ = 1000.0
RATE = 8000
AMPLITUDE = 0.5          # -6 dBFS
BLOCK_SECONDS = 0.02
MIN_SECONDS = 1.0
SILENCE_RMS = 300.0      # of 32768: about -40 dBFS
TONE_FRACTION = 0.5


def write(path, seconds, freq=FREQ):
    n = int(RATE * seconds)
    frames = b"".join(
        struct.pack("<h", int(round(AMPLITUDE * 32767 * math.sin(2 * math.pi * freq * i / RATE))))
        for i in range(n)
    )
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames)
    print(f"wrote {path}: {seconds} s of {freq:.0f} Hz at {RATE} Hz mono s16")


def read_mono(path):
    """Samples (first channel) and rate of a PCM s16 WAV. Parses RIFF itself rather than with the
    wave module so that a file whose writer was killed (baresip's sndfile leaves the RIFF and data
    sizes at 0 until the call ends) still reads: a data size of 0 or past the end means "to EOF"."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body:body + 16])
        elif cid == b"data":
            end = len(data) if size == 0 or body + size > len(data) else body + size
            pcm = data[body:end]
            break
        pos = body + size + (size & 1)
    if fmt is None or pcm is None:
        raise ValueError("fmt or data chunk missing")
    tag, ch, rate, _, _, bits = fmt
    if tag not in (1, 0xFFFE) or bits != 16:
        raise ValueError(f"format tag {tag}, {bits} bits: want PCM s16")
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    if ch > 1:  # keep the first channel
        samples = samples[::ch]
    return samples, rate


def goertzel_power(block, rate, freq):
    """|X(freq)|^2 of the block, normalised so a full-scale sine in the bin gives ~ (N/2)^2 * A^2."""
    k = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in block:
        s0 = x + k * s1 - s2
        s2, s1 = s1, s0
    return s1 * s1 + s2 * s2 - k * s1 * s2


def check(path, freq=FREQ):
    try:
        samples, rate = read_mono(path)
    except (OSError, ValueError, struct.error) as e:
        print(f"FAIL: {path}: cannot read WAV: {e}")
        return 1
    if rate <= 2 * freq:
        print(f"FAIL: {path}: sample rate {rate} Hz too low for a {freq:.0f} Hz tone")
        return 1
    size = max(1, int(rate * BLOCK_SECONDS))
    tone_blocks = 0
    nonsilent = 0
    fractions = []
    for start in range(0, len(samples) - size + 1, size):
        block = samples[start:start + size]
        energy = sum(x * x for x in block)
        rms = math.sqrt(energy / size)
        if rms < SILENCE_RMS:
            continue
        nonsilent += 1
        # Goertzel power of a pure sine filling the bin is (N/2)^2*A^2 while the block energy is
        # N*A^2/2, so the tone's share of the energy is 2*P/(N*E).
        frac = 2 * goertzel_power(block, rate, freq) / (size * energy)
        if frac >= TONE_FRACTION:
            tone_blocks += 1
            fractions.append(frac)
    total = len(samples) / rate if rate else 0
    tone_secs = tone_blocks * size / rate
    if tone_secs >= MIN_SECONDS:
        rel = sum(fractions) / len(fractions)
        print(f"OK: {path}: {freq:.0f} Hz tone for {tone_secs:.2f} s of {total:.2f} s; "
              f"relative energy at {freq:.0f} Hz {rel:.3f} ({10 * math.log10(rel):.1f} dB)")
        return 0
    print(f"FAIL: {path}: {freq:.0f} Hz tone for only {tone_secs:.2f} s of {total:.2f} s "
          f"(need {MIN_SECONDS:.1f} s; {nonsilent * size / rate:.2f} s not silent)")
    return 1


def main(argv):
    if len(argv) in (4, 5) and argv[1] == "write":
        write(argv[2], float(argv[3]), *(float(a) for a in argv[4:]))
        return 0
    if len(argv) in (3, 4) and argv[1] == "check":
        return check(argv[2], *(float(a) for a in argv[3:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
