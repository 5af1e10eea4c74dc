//! Outgoing frames as transports send them: a response or a reply laid out as its encoded header,
//! its error text and the function's output buffer ([`OutFrame`]), gathered into vectored sends
//! or copied into one small buffer ([`FlatBuf`]); and a large incoming frame received into a
//! buffer of its own ([`LargeFrame`]).

use crate::process::Response;
pub use praas_wire::flat::FlatBuf;
use praas_wire::protocol::{Header, HEADER_LEN};

/// A response laid out for sending: the encoded header and error text, then the output buffer
/// as the function left it. `sent` counts bytes already on the wire.
#[derive(Debug)]
pub struct OutFrame {
    header: Header,
    head: [u8; HEADER_LEN],
    meta: Vec<u8>,
    payload: Option<crate::buffer::PoolBuf>,
    sent: usize,
}

impl OutFrame {
    /// Lays out `response`; an error text longer than the 16-bit length field is cut. A large
    /// output gets NUL padding after the text, so that it leaves aligned like its memory
    /// ([`alignment_padding`](praas_wire::protocol::alignment_padding)), unless the padding would
    /// take the frame past `max_frame` (the process's frame limit, which its clients share).
    pub fn from_response(response: Response, max_frame: usize) -> Self {
        let outcome = response.outcome;
        let mut meta = outcome.message.into_bytes();
        meta.truncate(u16::MAX as usize);
        let payload_len = outcome.output.as_ref().map_or(0, |b| b.len());
        let Ok(payload_field) = u32::try_from(payload_len) else {
            // Only an output grown to the pool's largest class (4 GiB) under a frame limit that
            // large: refused rather than sent with a wrapped length.
            let text = format!("output of {payload_len} bytes exceeds the 32-bit payload length field");
            let outcome = crate::invocation::Outcome::error(praas_wire::protocol::Status::TooLarge, text);
            return Self::from_response(Response { id: response.id, outcome }, max_frame);
        };
        if let Some(output) = &outcome.output {
            let pad = praas_wire::protocol::alignment_padding(meta.len(), payload_len, output.as_ptr() as usize);
            if meta.len() + pad + payload_len <= max_frame {
                meta.resize(meta.len() + pad, 0);
            }
        }
        // Cut to u16::MAX above, and `alignment_padding` adds no padding past it.
        #[allow(clippy::cast_possible_truncation)]
        let meta_field = meta.len() as u16;
        let header = Header::response(response.id, outcome.status, meta_field, payload_field);
        Self { header, head: header.encode(), meta, payload: outcome.output, sent: 0 }
    }

    /// A frame of any kind with an owned payload (pings, control messages).
    pub fn raw(header: Header, meta: Vec<u8>, payload: Option<crate::buffer::PoolBuf>) -> Self {
        Self { header, head: header.encode(), meta, payload, sent: 0 }
    }

    /// Header and metadata, and the payload, of a frame nothing of which is sent yet: for a
    /// transport that sends the payload by another operation than the head.
    pub fn unsent_parts(&self) -> Option<([&[u8]; 2], &crate::buffer::PoolBuf)> {
        let payload = self.payload.as_ref().filter(|_| self.sent == 0)?;
        Some(([&self.head, &self.meta], payload))
    }

    /// The frame's parts, for transports that lay frames out themselves (RDMA).
    pub fn into_parts(self) -> (Header, Vec<u8>, Option<crate::buffer::PoolBuf>) {
        (self.header, self.meta, self.payload)
    }

    /// Gives back the frame's text and payload buffer (once it is sent): what is left holds no
    /// memory, so its box can carry the next frame.
    pub fn release(&mut self) {
        self.meta = Vec::new();
        self.payload = None;
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.meta.len() + self.payload.as_ref().map_or(0, |p| p.len())
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.sent >= self.len()
    }

    /// The unsent parts of this frame (at most three: header, metadata, payload).
    fn unsent(&self) -> impl Iterator<Item = &[u8]> {
        let mut skip = self.sent;
        let parts: [&[u8]; 3] = [&self.head, &self.meta, self.payload.as_deref().unwrap_or(&[])];
        parts.into_iter().filter_map(move |part| {
            if skip >= part.len() {
                skip -= part.len();
                return None;
            }
            let rest = &part[skip..];
            skip = 0;
            Some(rest)
        })
    }

    /// Records `n` more bytes sent; returns the bytes of `n` beyond this frame's end.
    pub fn advance(&mut self, n: usize) -> usize {
        let left = self.len() - self.sent;
        let used = n.min(left);
        self.sent += used;
        n - used
    }
}

/// Most slices one send gathers.
pub const MAX_GATHER: usize = 64;

/// The unsent bytes at the front of a send queue, as slices for one vectored send.
pub struct Gathered<'a> {
    /// The first `count` are initialised (the rest is never read: a send of one small frame
    /// writes three slices, not sixty-four).
    slices: [std::mem::MaybeUninit<std::io::IoSlice<'a>>; MAX_GATHER],
    count: usize,
    bytes: usize,
}

impl std::fmt::Debug for Gathered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gathered").field("slices", &self.count).field("bytes", &self.bytes).finish()
    }
}

impl<'a> Gathered<'a> {
    /// The unsent parts of `frames`, in order, as many as [`MAX_GATHER`] slices hold.
    pub fn of(frames: impl IntoIterator<Item = &'a OutFrame>) -> Self {
        let mut gathered = Self { slices: [std::mem::MaybeUninit::uninit(); MAX_GATHER], count: 0, bytes: 0 };
        'frames: for frame in frames {
            for part in frame.unsent() {
                if gathered.count == MAX_GATHER {
                    break 'frames;
                }
                gathered.slices[gathered.count].write(std::io::IoSlice::new(part));
                gathered.count += 1;
                gathered.bytes += part.len();
            }
        }
        gathered
    }

    /// The slices.
    pub fn slices(&self) -> &[std::io::IoSlice<'a>] {
        // SAFETY: the first `count` slices were written in `of`; MaybeUninit<T> has T's layout.
        unsafe { std::slice::from_raw_parts(self.slices.as_ptr().cast::<std::io::IoSlice<'a>>(), self.count) }
    }

    /// Bytes in all the slices.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The unsent bytes of `frames` in one buffer, when they are at most [`SMALL_SEND`](praas_wire::flat::SMALL_SEND): a small send
/// without gathering slices first.
pub fn flatten_frames<'a, 'b>(
    frames: impl IntoIterator<Item = &'a OutFrame>,
    buf: &'b mut FlatBuf,
) -> Option<&'b [u8]> {
    buf.fill_parts(frames.into_iter().flat_map(OutFrame::unsent))
}

/// A frame too large for a transport's receive buffers, received into a pool buffer of its own
/// (metadata and payload; the header is decoded already).
#[derive(Debug)]
pub struct LargeFrame {
    /// Its header.
    pub header: Header,
    /// Its metadata and payload.
    pub body: crate::buffer::PoolBuf,
}
