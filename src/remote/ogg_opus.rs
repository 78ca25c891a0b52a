//! Ogg-Opus streams as the clients of FLM-Audio's websocket protocol send and expect them:
//! 24 kHz mono Opus in Ogg pages.
//!
//! Reading takes whatever real clients send (several packets per page, 20-120 ms packets,
//! header pages alone or with audio, any stream serial, either granule convention: granule
//! positions are never read) and yields decoded 24 kHz samples. What it holds is bounded:
//! one page being completed, one logical stream at a time (a page that begins a new stream
//! replaces the old one; a page of another stream in the middle of one is an error), no
//! packet longer than any Opus packet can be, and the packets of the bytes it was last
//! given, which the caller decodes one at a time as it has room for their samples.
//!
//! Writing is what sphn 0.1.4's `OpusStreamWriter` sends, which the official clients read:
//! stream serial 42, an OpusHead page, an OpusTags page, then one page per 80 ms packet,
//! each page a message of its own, granule positions in 24 kHz samples.

use std::collections::VecDeque;

use anyhow::{Result, anyhow, bail};
use ogg::reading::{BasePacketReader, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// The codec's rate, both ways.
pub const RATE: u32 = 24_000;
/// The most samples one Opus packet decodes to at 24 kHz (120 ms).
pub const MAX_PACKET_SAMPLES: usize = 2880;
/// The longest Opus packet taken: 120 ms at Opus's highest bitrate (510 kbit/s) is 7,650
/// bytes; the official clients send 80 ms packets of some 100 to 300 bytes.
pub const MAX_PACKET_BYTES: usize = 7_680;
/// The largest Ogg page (27 header bytes, 255 lacing values of 255 bytes).
const MAX_PAGE: usize = 27 + 255 + 255 * 255;
/// The stream serial sphn's writer uses.
const SERIAL: u32 = 42;
/// OpusHead's pre-skip as sphn writes it (in 48 kHz samples).
const PRE_SKIP: u16 = 3840;
/// Page header flags (RFC 3533): the page continues a packet, begins a stream.
const CONTINUED: u8 = 0x01;
const BEGINS: u8 = 0x02;

/// A packet longer than any Opus packet: the stream is refused (websocket close 1009).
#[derive(Debug)]
pub struct PacketTooLong(pub usize);

impl std::fmt::Display for PacketTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an Ogg packet of {} bytes or more: no Opus packet is over {MAX_PACKET_BYTES}",
            self.0
        )
    }
}

impl std::error::Error for PacketTooLong {}

/// Incoming Ogg-Opus bytes to 24 kHz mono samples.
pub struct OggOpusReader {
    /// Bytes of a page not yet complete.
    partial: Vec<u8>,
    packets: BasePacketReader,
    /// The serial of the logical stream being read, once a page has come.
    serial: Option<u32>,
    /// Bytes of a packet that the next page continues.
    continued: usize,
    /// Packets read from pages, not yet decoded.
    queued: VecDeque<Vec<u8>>,
    decoder: opus::Decoder,
    pcm: Vec<f32>,
    /// Opus packets decoded so far (headers not counted).
    pub packets_decoded: u64,
}

impl OggOpusReader {
    pub fn new() -> Result<OggOpusReader> {
        Ok(OggOpusReader {
            partial: Vec::with_capacity(MAX_PAGE),
            packets: BasePacketReader::new(),
            serial: None,
            continued: 0,
            queued: VecDeque::new(),
            decoder: opus::Decoder::new(RATE, opus::Channels::Mono)
                .map_err(|e| anyhow!("Opus decoder: {e}"))?,
            pcm: vec![0.0; MAX_PACKET_SAMPLES],
            packets_decoded: 0,
        })
    }

    /// Takes the next bytes of the stream and decodes every packet they complete, handing
    /// the samples to `out`: `read`, then `decode_next` until nothing is left.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl FnMut(&[f32])) -> Result<()> {
        self.read(bytes)?;
        while self.decode_next(out)? {}
        Ok(())
    }

    /// Takes the next bytes of the stream (any split: part of a page, pages, or nothing)
    /// and queues the packets they complete, undecoded. A stream that is not Ogg, a page
    /// whose checksum fails, a page of a second stream or a packet longer than any Opus
    /// packet (`PacketTooLong`) is an error naming the problem.
    pub fn read(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let want = self.page_len()?.unwrap_or(27);
            let take = (want - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page_len()? == Some(self.partial.len()) {
                self.take_page()?;
            }
        }
        Ok(())
    }

    /// Packets read and not yet decoded.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Decodes the oldest queued packet, handing its samples (at most
    /// `MAX_PACKET_SAMPLES`) to `out`; false when none was queued. A packet that is not Opus
    /// is an error naming it.
    pub fn decode_next(&mut self, out: &mut impl FnMut(&[f32])) -> Result<bool> {
        let Some(packet) = self.queued.pop_front() else {
            return Ok(false);
        };
        self.decode(&packet, out)?;
        Ok(true)
    }

    /// The whole page's length once its header and lacing values are in.
    fn page_len(&self) -> Result<Option<usize>> {
        let p = &self.partial;
        if p.len() >= 4 && &p[..4] != b"OggS" {
            bail!("not an Ogg stream (no page starts here)");
        }
        if p.len() < 27 {
            return Ok(None);
        }
        let lacing = p[26] as usize;
        if p.len() < 27 + lacing {
            return Ok(Some(27 + lacing));
        }
        let body: usize = p[27..27 + lacing].iter().map(|&b| b as usize).sum();
        Ok(Some(27 + lacing + body))
    }

    fn take_page(&mut self) -> Result<()> {
        let page = &self.partial;
        let flags = page[5];
        let serial = u32::from_le_bytes(page[14..18].try_into().expect("4 bytes"));
        let lacing = page[26] as usize;
        let mut header = [0u8; 27];
        header.copy_from_slice(&page[..27]);
        let segments = page[27..27 + lacing].to_vec();
        let body = page[27 + lacing..].to_vec();
        self.partial.clear();
        let new_stream = match self.serial {
            Some(s) if s != serial && flags & BEGINS == 0 => bail!(
                "Ogg page of stream {serial} in the middle of stream {s}: one stream at a time"
            ),
            Some(s) => s != serial,
            None => false,
        };
        // The packets' lengths, before the packet reader keeps any of them: a packet
        // continued from page to page grows up to MAX_PACKET_BYTES, no further.
        let mut len = if flags & CONTINUED != 0 && !new_stream {
            self.continued
        } else {
            0
        };
        for &v in &segments {
            len += v as usize;
            if len > MAX_PACKET_BYTES {
                bail!(PacketTooLong(len));
            }
            if v < 255 {
                len = 0;
            }
        }
        let (mut parser, _) = PageParser::new(header).map_err(|e| anyhow!("Ogg page: {e}"))?;
        parser.parse_segments(segments);
        let page = parser
            .parse_packet_data(body)
            .map_err(|e| anyhow!("Ogg page: {e}"))?;
        if new_stream {
            // A new stream replaces the last one, whatever it left unfinished.
            self.packets = BasePacketReader::new();
        }
        self.serial = Some(serial);
        self.continued = len;
        self.packets
            .push_page(page)
            .map_err(|e| anyhow!("Ogg page: {e}"))?;
        while let Some(packet) = self.packets.read_packet() {
            self.queued.push_back(packet.data);
        }
        Ok(())
    }

    fn decode(&mut self, packet: &[u8], out: &mut impl FnMut(&[f32])) -> Result<()> {
        // Header packets (a client may start a new logical stream at any time), and empty
        // packets, carry no audio.
        if packet.is_empty() || packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags") {
            return Ok(());
        }
        let n = self
            .decoder
            .decode_float(packet, &mut self.pcm, false)
            .map_err(|e| anyhow!("Opus packet of {} bytes: {e}", packet.len()))?;
        self.packets_decoded += 1;
        out(&self.pcm[..n]);
        Ok(())
    }
}

/// 24 kHz mono samples to Ogg-Opus pages, one 80 ms packet per page.
pub struct OggOpusWriter {
    encoder: opus::Encoder,
    pages: PacketWriter<'static, Vec<u8>>,
    granule: u64,
    packet: Vec<u8>,
}

/// The samples of one packet: 80 ms at 24 kHz.
pub const PACKET_SAMPLES: usize = 1920;

impl OggOpusWriter {
    pub fn new() -> Result<OggOpusWriter> {
        Ok(OggOpusWriter {
            encoder: opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| anyhow!("Opus encoder: {e}"))?,
            pages: PacketWriter::new(Vec::with_capacity(4096)),
            granule: 0,
            packet: vec![0; 4000],
        })
    }

    /// The two header pages (OpusHead, then OpusTags), each to be sent on its own.
    pub fn headers(&mut self) -> Result<[Vec<u8>; 2]> {
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&RATE.to_le_bytes()); // the input's rate
        head.extend_from_slice(&0u16.to_le_bytes()); // output gain
        head.push(0); // mapping family: one mono or stereo stream
        let mut tags = Vec::with_capacity(32);
        tags.extend_from_slice(b"OpusTags");
        let vendor = b"flm-edge";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no comments
        Ok([self.page(head, 0)?, self.page(tags, 0)?])
    }

    /// One 80 ms frame (1920 samples) as one Ogg page.
    pub fn frame(&mut self, pcm: &[f32]) -> Result<Vec<u8>> {
        if pcm.len() != PACKET_SAMPLES {
            bail!(
                "an Opus frame takes {PACKET_SAMPLES} samples, not {}",
                pcm.len()
            );
        }
        let n = self
            .encoder
            .encode_float(pcm, &mut self.packet)
            .map_err(|e| anyhow!("Opus encoder: {e}"))?;
        self.granule += PACKET_SAMPLES as u64;
        let packet = self.packet[..n].to_vec();
        self.page(packet, self.granule)
    }

    fn page(&mut self, packet: Vec<u8>, granule: u64) -> Result<Vec<u8>> {
        self.pages
            .write_packet(packet, SERIAL, PacketWriteEndInfo::EndPage, granule)
            .map_err(|e| anyhow!("Ogg page: {e}"))?;
        Ok(std::mem::take(self.pages.inner_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, f: f32) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (std::f32::consts::TAU * f * i as f32 / RATE as f32).sin())
            .collect()
    }

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<f32>> {
        let mut r = OggOpusReader::new()?;
        let mut pcm = vec![];
        for c in chunks {
            r.push(c, &mut |x: &[f32]| pcm.extend_from_slice(x))?;
        }
        Ok(pcm)
    }

    #[test]
    fn written_pages_read_back_whatever_the_split() {
        let mut w = OggOpusWriter::new().unwrap();
        let [head, tags] = w.headers().unwrap();
        assert_eq!(&head[..4], b"OggS");
        assert_eq!(&head[28..36], b"OpusHead");
        assert_eq!(u32::from_le_bytes(head[14..18].try_into().unwrap()), SERIAL);
        let x = tone(PACKET_SAMPLES * 10, 440.0);
        let pages: Vec<Vec<u8>> = x
            .chunks(PACKET_SAMPLES)
            .map(|c| w.frame(c).unwrap())
            .collect();
        // The granule position counts 24 kHz samples, as sphn's writer does.
        let granule = |p: &[u8]| u64::from_le_bytes(p[6..14].try_into().unwrap());
        assert_eq!(granule(&pages[9]), 10 * PACKET_SAMPLES as u64);
        let mut all = [head.clone(), tags.clone()].concat();
        for p in &pages {
            all.extend_from_slice(p);
        }
        let whole = decode_all(&[&all]).unwrap();
        assert_eq!(whole.len(), x.len());
        // Byte by byte, and in odd pieces: the same samples.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), whole);
        let odd: Vec<&[u8]> = all.chunks(37).collect();
        assert_eq!(decode_all(&odd).unwrap(), whole);
        // Opus at 24 kHz keeps a tone: after the codec's delay, the error is small.
        let delay = (1..200)
            .min_by(|&a, &b| {
                let e =
                    |d: usize| -> f32 { (4000..8000).map(|i| (whole[i + d] - x[i]).powi(2)).sum() };
                e(a).total_cmp(&e(b))
            })
            .unwrap();
        let err: f32 = (4000..15000)
            .map(|i| (whole[i + delay] - x[i]).powi(2))
            .sum();
        let sig: f32 = (4000..15000).map(|i| x[i].powi(2)).sum();
        assert!(
            10.0 * (sig / err).log10() > 10.0,
            "{} dB",
            10.0 * (sig / err).log10()
        );
    }

    #[test]
    fn streams_without_headers_with_several_packets_per_page_and_short_packets() {
        // 20 ms packets (as Kyutai's web client sends), two per page, no header pages.
        let mut enc =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let x = tone(480 * 8, 300.0);
        let mut pw = PacketWriter::new(Vec::new());
        for (i, c) in x.chunks(480).enumerate() {
            let p = enc.encode_vec_float(c, 4000).unwrap();
            let end = if i % 2 == 1 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            // A 48 kHz granule, as the Ogg Opus spec asks: never read.
            pw.write_packet(p, 7, end, (i as u64 + 1) * 960).unwrap();
        }
        let bytes = pw.into_inner();
        assert_eq!(decode_all(&[&bytes]).unwrap().len(), x.len());
        // Empty pushes are nothing.
        assert_eq!(decode_all(&[&[], &bytes, &[]]).unwrap().len(), x.len());
    }

    #[test]
    fn malformed_streams_are_errors_naming_the_problem() {
        let e = decode_all(&[b"RIFF....WAVE"]).unwrap_err();
        assert!(e.to_string().contains("not an Ogg stream"), "{e}");
        let mut w = OggOpusWriter::new().unwrap();
        let mut page = w.frame(&tone(PACKET_SAMPLES, 200.0)).unwrap();
        let last = page.len() - 1;
        page[last] ^= 0x55;
        let e = decode_all(&[&page]).unwrap_err();
        assert!(e.to_string().contains("Ogg page"), "{e}");
        // A valid page whose packet is not Opus.
        let mut pw = PacketWriter::new(Vec::new());
        pw.write_packet(vec![0xff; 3], 1, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let e = decode_all(&[&pw.into_inner()]).unwrap_err();
        assert!(e.to_string().contains("Opus packet"), "{e}");
    }

    /// Pages as a client would send them: `packets` on stream `serial`, one page each.
    fn pages(serial: u32, packets: &[Vec<u8>]) -> Vec<u8> {
        let mut pw = PacketWriter::new(Vec::new());
        for p in packets {
            pw.write_packet(p.clone(), serial, PacketWriteEndInfo::EndPage, 0)
                .unwrap();
        }
        pw.into_inner()
    }

    /// The length of the page `bytes` starts with.
    fn page_bytes(bytes: &[u8]) -> usize {
        let n = bytes[26] as usize;
        27 + n + bytes[27..27 + n].iter().map(|&v| v as usize).sum::<usize>()
    }

    fn opus_packets(n: usize) -> Vec<Vec<u8>> {
        let mut enc =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        tone(PACKET_SAMPLES * n, 250.0)
            .chunks(PACKET_SAMPLES)
            .map(|c| enc.encode_vec_float(c, 4000).unwrap())
            .collect()
    }

    #[test]
    fn a_packet_longer_than_any_opus_packet_is_refused_before_it_is_kept() {
        // Pages with valid checksums whose packet never ends (every lacing value 255): 1 MiB
        // of them, fed a page at a time.
        let bytes = pages(9, &[vec![0x55; 1 << 20]]);
        let mut r = OggOpusReader::new().unwrap();
        let mut fed = 0;
        let err = loop {
            let n = (bytes.len() - fed).min(MAX_PAGE);
            match r.read(&bytes[fed..fed + n]) {
                Ok(()) => fed += n,
                Err(e) => break e,
            }
            assert!(fed < bytes.len(), "the whole packet was taken");
        };
        assert!(err.downcast_ref::<PacketTooLong>().is_some(), "{err}");
        assert!(
            err.to_string().contains("no Opus packet is over 7680"),
            "{err}"
        );
        // Refused on the first page that takes it past the bound: nothing past it was kept.
        assert!(fed <= MAX_PACKET_BYTES + MAX_PAGE, "{fed} bytes taken");
        assert_eq!(r.queued(), 0);
        // A packet of exactly the bound, continued over pages, is taken.
        let mut r = OggOpusReader::new().unwrap();
        r.read(&pages(9, &[vec![0x55; MAX_PACKET_BYTES]])).unwrap();
        assert_eq!(r.queued(), 1);
    }

    #[test]
    fn one_stream_at_a_time() {
        let packets = opus_packets(4);
        let mut r = OggOpusReader::new().unwrap();
        r.read(&pages(7, &packets[..2])).unwrap();
        // A page of another stream that does not begin it: refused.
        let other = pages(8, &packets[2..]);
        let second = page_bytes(&other);
        let e = r.read(&other[second..]).unwrap_err();
        assert!(e.to_string().contains("one stream at a time"), "{e}");
        // A new stream that begins (a client that restarts its recorder) replaces the first.
        let mut r = OggOpusReader::new().unwrap();
        r.read(&pages(7, &packets[..2])).unwrap();
        r.read(&other).unwrap();
        let mut n = 0;
        while r.decode_next(&mut |pcm: &[f32]| n += pcm.len()).unwrap() {}
        assert_eq!(n, 4 * PACKET_SAMPLES);
        // A page whose checksum fails changes nothing: the stream goes on.
        let mine = pages(7, &packets[..2]);
        let first = page_bytes(&mine);
        let mut r = OggOpusReader::new().unwrap();
        r.read(&mine[..first]).unwrap();
        let mut bad = other[..second].to_vec();
        bad[second - 1] ^= 1;
        assert!(r.read(&bad).unwrap_err().to_string().contains("Ogg page"));
        r.read(&mine[first..]).unwrap();
        assert_eq!(r.queued(), 2);
    }
}
