//! Ogg-Opus streams as the clients of FLM-Audio's websocket protocol send and expect them:
//! 24 kHz mono Opus in Ogg pages.
//!
//! Reading takes whatever real clients send (several packets per page, 20-120 ms packets,
//! header pages alone or with audio, any stream serial, either granule convention: granule
//! positions are never read) and yields decoded 24 kHz samples. Writing is what sphn 0.1.4's
//! `OpusStreamWriter` sends, which the official clients read: stream serial 42, an OpusHead
//! page, an OpusTags page, then one page per 80 ms packet, each page a message of its own,
//! granule positions in 24 kHz samples.

use anyhow::{Result, anyhow, bail};
use ogg::reading::{BasePacketReader, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// The codec's rate, both ways.
pub const RATE: u32 = 24_000;
/// The most samples one Opus packet decodes to at 24 kHz (120 ms).
const MAX_PACKET_SAMPLES: usize = 2880;
/// The largest Ogg page (27 header bytes, 255 lacing values of 255 bytes).
const MAX_PAGE: usize = 27 + 255 + 255 * 255;
/// The stream serial sphn's writer uses.
const SERIAL: u32 = 42;
/// OpusHead's pre-skip as sphn writes it (in 48 kHz samples).
const PRE_SKIP: u16 = 3840;

/// Incoming Ogg-Opus bytes to 24 kHz mono samples.
pub struct OggOpusReader {
    /// Bytes of a page not yet complete.
    partial: Vec<u8>,
    packets: BasePacketReader,
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
            decoder: opus::Decoder::new(RATE, opus::Channels::Mono)
                .map_err(|e| anyhow!("Opus decoder: {e}"))?,
            pcm: vec![0.0; MAX_PACKET_SAMPLES],
            packets_decoded: 0,
        })
    }

    /// Takes the next bytes of the stream (any split: part of a page, pages, or nothing) and
    /// hands the samples of every packet completed to `out`. A stream that is not Ogg, a page
    /// whose checksum fails or a packet that is not Opus is an error naming the problem.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(&[f32])) -> Result<()> {
        while !bytes.is_empty() {
            let want = self.page_len()?.unwrap_or(27);
            let take = (want - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page_len()? == Some(self.partial.len()) {
                self.take_page(out)?;
            }
        }
        Ok(())
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

    fn take_page(&mut self, out: &mut impl FnMut(&[f32])) -> Result<()> {
        let page = std::mem::take(&mut self.partial);
        let mut header = [0u8; 27];
        header.copy_from_slice(&page[..27]);
        let (mut parser, lacing) = PageParser::new(header).map_err(|e| anyhow!("Ogg page: {e}"))?;
        parser.parse_segments(page[27..27 + lacing].to_vec());
        let page = parser
            .parse_packet_data(page[27 + lacing..].to_vec())
            .map_err(|e| anyhow!("Ogg page: {e}"))?;
        self.packets
            .push_page(page)
            .map_err(|e| anyhow!("Ogg page: {e}"))?;
        while let Some(packet) = self.packets.read_packet() {
            self.decode(&packet.data, out)?;
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
}
