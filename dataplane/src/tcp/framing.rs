//! Incremental, sans-IO deframing of RTP carried over a TCP byte stream.
//!
//! The relay forwards stream bytes unchanged whatever they contain; the deframer only tells the
//! statistics where packets start and end. It therefore never fails: bytes it cannot place in a
//! frame are reported as unframed and counted as framing errors, and it resynchronises where the
//! framing allows it (RTSP interleaved has a `$` marker; RFC 4571 has none).

/// How RTP packets are delimited on a TCP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpFraming {
    /// RFC 4571: a 16-bit big-endian length before each RTP or RTCP packet.
    #[default]
    Rfc4571,
    /// RTSP interleaved (RFC 2326 10.12): `$`, a channel byte, a 16-bit length. Even channels
    /// carry RTP, odd channels RTCP.
    Interleaved,
    /// No framing known: only bytes are counted.
    None,
}

/// One complete packet found in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Whether the framing marks it as RTCP (interleaved odd channel); RFC 4571 frames are
    /// `false` and left to the RTP/RTCP demultiplexer.
    pub rtcp: bool,
    pub payload: &'a [u8],
    /// Bytes the frame occupied on the wire, header included.
    pub wire_len: usize,
}

/// What one [`Deframer::push`] found besides the frames it reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Bytes that belong to no frame (framing `None`, or garbage skipped while resynchronising).
    pub unframed: usize,
    /// Framing errors detected in this chunk.
    pub errors: u64,
}

/// Stream state between reads: a partial header or a partial frame.
#[derive(Debug, Clone)]
pub struct Deframer {
    framing: TcpFraming,
    /// The header and the payload bytes of the current frame received so far.
    partial: Vec<u8>,
    /// Payload length of the current frame once its header is complete.
    want: Option<usize>,
    /// The current frame's channel (interleaved).
    rtcp: bool,
    /// Skipping garbage until the next `$` (interleaved only).
    resyncing: bool,
}

impl Deframer {
    pub fn new(framing: TcpFraming) -> Self {
        Self {
            framing,
            partial: Vec::new(),
            want: None,
            rtcp: false,
            resyncing: false,
        }
    }

    pub fn framing(&self) -> TcpFraming {
        self.framing
    }

    fn header_len(&self) -> usize {
        match self.framing {
            TcpFraming::Rfc4571 => 2,
            TcpFraming::Interleaved => 4,
            TcpFraming::None => 0,
        }
    }

    /// Feeds the next bytes of the stream; calls `on_frame` for every frame completed by them.
    /// Frames wholly inside `data` are passed without copying; only a frame split across reads
    /// is buffered (at most 64 KiB + header).
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Frame<'_>)) -> PushOutcome {
        let mut out = PushOutcome::default();
        if self.framing == TcpFraming::None {
            out.unframed = data.len();
            return out;
        }
        let header = self.header_len();
        while !data.is_empty() {
            if self.resyncing {
                match data.iter().position(|&b| b == b'$') {
                    Some(i) => {
                        out.unframed += i;
                        data = &data[i..];
                        self.resyncing = false;
                    }
                    None => {
                        out.unframed += data.len();
                        return out;
                    }
                }
            }
            let Some(want) = self.want else {
                // Collecting a header.
                if self.partial.is_empty()
                    && self.framing == TcpFraming::Interleaved
                    && data[0] != b'$'
                {
                    out.errors += 1;
                    self.resyncing = true;
                    continue;
                }
                let take = (header - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() == header {
                    let len = usize::from(u16::from_be_bytes([
                        self.partial[header - 2],
                        self.partial[header - 1],
                    ]));
                    self.rtcp = self.framing == TcpFraming::Interleaved && self.partial[1] % 2 == 1;
                    if len == 0 {
                        // No RTP or RTCP packet is empty: a sign of a peer that frames
                        // differently; the header is still consumed as a frame boundary.
                        out.errors += 1;
                        out.unframed += header;
                        self.partial.clear();
                    } else {
                        self.want = Some(len);
                    }
                }
                continue;
            };
            let have = self.partial.len() - header;
            if have == 0 && data.len() >= want {
                on_frame(Frame {
                    rtcp: self.rtcp,
                    payload: &data[..want],
                    wire_len: header + want,
                });
                data = &data[want..];
                self.partial.clear();
                self.want = None;
                continue;
            }
            let take = (want - have).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == header + want {
                on_frame(Frame {
                    rtcp: self.rtcp,
                    payload: &self.partial[header..],
                    wire_len: header + want,
                });
                self.partial.clear();
                self.want = None;
            }
        }
        out
    }

    /// Bytes held for a frame that is not complete yet.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rfc4571(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn interleaved(channel: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b'$', channel];
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn collect(d: &mut Deframer, chunks: &[&[u8]]) -> (Vec<(bool, Vec<u8>)>, PushOutcome) {
        let mut frames = Vec::new();
        let mut total = PushOutcome::default();
        for c in chunks {
            let o = d.push(c, |f| frames.push((f.rtcp, f.payload.to_vec())));
            total.unframed += o.unframed;
            total.errors += o.errors;
        }
        (frames, total)
    }

    #[test]
    fn rfc4571_frames_split_anywhere() {
        let mut stream = rfc4571(b"hello");
        stream.extend(rfc4571(&[7u8; 300]));
        for cut in 0..stream.len() {
            let mut d = Deframer::new(TcpFraming::Rfc4571);
            let (frames, o) = collect(&mut d, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].1, b"hello");
            assert_eq!(frames[1].1, vec![7u8; 300]);
            assert_eq!(o, PushOutcome::default());
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn interleaved_channels_and_resync() {
        let mut stream = interleaved(0, b"rtp");
        stream.extend_from_slice(b"RTSP/1.0 200 OK\r\n\r\n");
        stream.extend(interleaved(1, b"rtcp"));
        let mut d = Deframer::new(TcpFraming::Interleaved);
        let (frames, o) = collect(&mut d, &[&stream]);
        assert_eq!(
            frames,
            vec![(false, b"rtp".to_vec()), (true, b"rtcp".to_vec())]
        );
        assert_eq!(o.errors, 1);
        assert_eq!(o.unframed, 19);
    }

    #[test]
    fn none_counts_bytes_only_and_empty_frames_are_errors() {
        let mut d = Deframer::new(TcpFraming::None);
        let (frames, o) = collect(&mut d, &[b"abc"]);
        assert!(frames.is_empty());
        assert_eq!(o.unframed, 3);
        let mut d = Deframer::new(TcpFraming::Rfc4571);
        let (frames, o) = collect(&mut d, &[&[0, 0, 0, 1, 9]]);
        assert_eq!(frames, vec![(false, vec![9])]);
        assert_eq!((o.errors, o.unframed), (1, 2));
    }

    proptest! {
        #[test]
        fn arbitrary_chunking_gives_the_same_frames(
            frames in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u8>(), 1..600)), 0..20),
            cuts in proptest::collection::vec(0usize..4000, 0..30),
            interleave in any::<bool>(),
        ) {
            let framing = if interleave { TcpFraming::Interleaved } else { TcpFraming::Rfc4571 };
            let mut stream = Vec::new();
            for (ch, p) in &frames {
                stream.extend(if interleave { interleaved(*ch, p) } else { rfc4571(p) });
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[prev..c]);
                prev = c;
            }
            let mut d = Deframer::new(framing);
            let (got, o) = collect(&mut d, &chunks);
            let want: Vec<(bool, Vec<u8>)> = frames
                .iter()
                .map(|(ch, p)| (interleave && ch % 2 == 1, p.clone()))
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(o, PushOutcome::default());
        }

        #[test]
        fn random_bytes_never_panic_and_every_byte_is_accounted(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            chunk in 1usize..700,
            mode in 0u8..3,
        ) {
            let framing = [TcpFraming::Rfc4571, TcpFraming::Interleaved, TcpFraming::None][usize::from(mode)];
            let mut d = Deframer::new(framing);
            let mut framed = 0;
            let mut unframed = 0;
            for c in bytes.chunks(chunk) {
                let o = d.push(c, |f| framed += f.wire_len);
                unframed += o.unframed;
            }
            prop_assert_eq!(framed + unframed + d.buffered(), bytes.len());
        }
    }
}
