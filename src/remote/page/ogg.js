// Ogg framing for Opus (RFC 3533, RFC 7845): a muxer for what the page sends to /api/chat and
// a demuxer for what it receives. No codec here: WebCodecs encodes and decodes the packets.

// CRC-32 of Ogg pages: polynomial 0x04c11db7, not reflected, initial value 0, no final xor.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let k = 0; k < 8; k++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    t[i] = r >>> 0;
  }
  return t;
})();

export function crc32(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) {
    crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  }
  return crc;
}

const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const startsWith = (bytes, s) => bytes.length >= s.length && [...s].every((c, i) => bytes[i] === c.charCodeAt(0));

/** The OpusHead packet (RFC 7845 §5.1): version 1, mapping family 0, gain 0. */
export function opusHead({ channels = 1, preSkip = 3840, inputRate = 24000 } = {}) {
  const b = new Uint8Array(19);
  const v = new DataView(b.buffer);
  b.set(ascii('OpusHead'));
  b[8] = 1; // version
  b[9] = channels;
  v.setUint16(10, preSkip, true); // in 48 kHz samples
  v.setUint32(12, inputRate, true); // informational: the rate the audio was captured at
  v.setInt16(16, 0, true); // output gain
  b[18] = 0; // mapping family 0: mono or stereo, one stream
  return b;
}

/** The OpusTags packet (RFC 7845 §5.2): a vendor string and no comments. */
export function opusTags(vendor = 'flm-edge web page') {
  const vend = new TextEncoder().encode(vendor);
  const b = new Uint8Array(8 + 4 + vend.length + 4);
  const v = new DataView(b.buffer);
  b.set(ascii('OpusTags'));
  v.setUint32(8, vend.length, true);
  b.set(vend, 12);
  v.setUint32(12 + vend.length, 0, true); // comment count
  return b;
}

// Header type flags.
const CONTINUED = 1, BOS = 2, EOS = 4;

/** Packets to Ogg pages of one logical stream. */
export class OggWriter {
  constructor(serial = (Math.random() * 0xffffffff) >>> 0) {
    this.serial = serial;
    this.sequence = 0;
    this.started = false; // the first page gets the BOS flag
  }

  /**
   * The pages holding `packets` (Uint8Arrays), all ending on this call: one page unless they
   * need more than 255 lacing values. `granule` is the stream's position after the last
   * packet; pages on which no packet ends carry -1, as the spec says.
   */
  pages(packets, granule, { eos = false } = {}) {
    // Lacing values: each packet is runs of 255 and a last value below 255 (0 if need be).
    const segs = []; // [lacing value, packet index, offset]
    packets.forEach((p, i) => {
      let off = 0;
      for (; p.length - off >= 255; off += 255) segs.push([255, i, off]);
      segs.push([p.length - off, i, off]);
    });
    const out = [];
    let continued = false;
    for (let first = 0; first < segs.length || out.length === 0; first += 255) {
      const mine = segs.slice(first, first + 255);
      const last = first + 255 >= segs.length;
      // A packet ends on this page if one of its lacing values is below 255.
      const ends = mine.some(([len]) => len < 255);
      const body = mine.reduce((n, [len]) => n + len, 0);
      const page = new Uint8Array(27 + mine.length + body);
      const v = new DataView(page.buffer);
      page.set(ascii('OggS'));
      page[4] = 0; // version
      page[5] = (continued ? CONTINUED : 0) | (this.started ? 0 : BOS) | (eos && last ? EOS : 0);
      const g = ends ? BigInt(granule) : -1n;
      v.setBigInt64(6, g, true);
      v.setUint32(14, this.serial, true);
      v.setUint32(18, this.sequence++, true);
      // bytes 22..25: CRC, computed over the page with these bytes zero
      page[26] = mine.length;
      let at = 27 + mine.length;
      mine.forEach(([len, i, off], k) => {
        page[27 + k] = len;
        page.set(packets[i].subarray(off, off + len), at);
        at += len;
      });
      v.setUint32(22, crc32(page), true);
      out.push(page);
      this.started = true;
      continued = mine.length > 0 && mine[mine.length - 1][0] === 255;
    }
    return out;
  }
}

/**
 * Ogg bytes, in any split (part of a page, several pages), to packets. Packets continued
 * across pages are joined. OpusHead and OpusTags are kept aside (`head`, `tags`), not returned.
 * A page whose checksum fails is dropped and counted (`badPages`); bytes that are not a page
 * are skipped to the next "OggS".
 */
export class OggReader {
  constructor() {
    this.buf = new Uint8Array(0);
    this.partial = null; // the start of a packet continued on the next page
    this.head = null;
    this.tags = null;
    this.pages = 0;
    this.badPages = 0;
    this.skippedBytes = 0;
  }

  /** Takes the next bytes; returns the audio packets they complete. */
  push(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    let b = joined;
    const packets = [];
    for (;;) {
      // Find a page start.
      let s = 0;
      while (s + 4 <= b.length && !startsWith(b.subarray(s), 'OggS')) s++;
      if (s + 4 > b.length) s = Math.max(0, b.length - 3); // keep a possible partial "Ogg"
      this.skippedBytes += s;
      b = b.subarray(s);
      if (b.length < 27) break;
      const nseg = b[26];
      if (b.length < 27 + nseg) break;
      let len = 27 + nseg;
      for (let k = 0; k < nseg; k++) len += b[27 + k];
      if (b.length < len) break;
      const page = b.slice(0, len);
      b = b.subarray(len);
      if (!this.checkCrc(page)) {
        this.badPages++;
        this.partial = null;
        continue;
      }
      this.pages++;
      this.takePage(page, nseg, packets);
    }
    this.buf = b.slice();
    return packets;
  }

  checkCrc(page) {
    const v = new DataView(page.buffer, page.byteOffset);
    const want = v.getUint32(22, true);
    v.setUint32(22, 0, true);
    const ok = crc32(page) === want;
    v.setUint32(22, want, true);
    return ok;
  }

  takePage(page, nseg, packets) {
    const continued = (page[5] & CONTINUED) !== 0;
    let at = 27 + nseg;
    let chunks = continued && this.partial ? this.partial : null;
    // A continued page without the packet's start (or a start without its continuation):
    // that packet is lost.
    let skipping = continued && !this.partial;
    if (!continued) chunks = null;
    this.partial = null;
    for (let k = 0; k < nseg; k++) {
      const len = page[27 + k];
      const piece = page.subarray(at, at + len);
      at += len;
      if (!skipping) (chunks ||= []).push(piece);
      if (len < 255) {
        if (!skipping) this.emit(concat(chunks), packets);
        chunks = null;
        skipping = false;
      }
    }
    if (chunks) this.partial = chunks;
  }

  emit(p, packets) {
    if (startsWith(p, 'OpusHead')) this.head = p;
    else if (startsWith(p, 'OpusTags')) this.tags = p;
    else if (p.length > 0) packets.push(p);
  }
}

function concat(chunks) {
  if (chunks.length === 1) return chunks[0].slice();
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** The duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 §3.1). */
export function opusPacketSamples(p) {
  if (p.length === 0) return 0;
  const config = p[0] >> 3;
  // Frame length in 48 kHz samples: SILK (configs 0-11), hybrid (12-15), CELT (16-31).
  const frame =
    config < 12 ? [480, 960, 1920, 2880][config & 3]
    : config < 16 ? [480, 960][config & 1]
    : [120, 240, 480, 960][config & 3];
  const code = p[0] & 3;
  const frames = code === 0 ? 1 : code < 3 ? 2 : p.length > 1 ? p[1] & 0x3f : 0;
  return frame * frames;
}
