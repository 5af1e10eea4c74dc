//! The praas wire protocol: one fixed 24-byte little-endian header, then `meta_len` bytes of
//! metadata (a function name, an error text), then `payload_len` bytes of payload.
//!
//! `docs/protocol.md` documents the byte layout. Decoding validates every field before anything
//! is allocated: a header that passes [`Header::decode`] with a [`FrameLimits`] describes a frame
//! of at most `limits.max_frame` bytes after the header. A frame of at most [`SMALL_SEND`] bytes
//! leaves copied into one [`FlatBuf`] and written whole.

use thiserror::Error;

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 24;
/// First two bytes of every frame: `b"PR"`.
pub const MAGIC: [u8; 2] = *b"PR";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Default limit on `meta_len + payload_len` of one frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// What a frame carries. Values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// Client to process: invoke the function named in the metadata with the payload as input.
    Invoke = 1,
    /// Process to client: the result of the invocation with the same id.
    Response = 2,
    /// Process to process: a message (`put`); metadata holds the key (`docs/messages.md`).
    Message = 3,
    /// Acknowledges that a message was stored by its destination, or says why not.
    MessageAck = 4,
    /// Control plane to process: swap out. Reserved.
    SwapRequest = 5,
    /// Process to control plane: swap finished, with its size. Reserved.
    SwapConfirm = 6,
    /// Control plane to process: the peers of its application changed. Reserved.
    PeerUpdate = 7,
    /// Process to control plane: periodic metrics. Reserved.
    Metrics = 8,
    /// Liveness probe; answered with a `Pong` carrying the same id and payload.
    Ping = 9,
    /// Answer to `Ping`.
    Pong = 10,
    /// First frame of a control-channel connection: who is connecting, authenticated. Reserved.
    Hello = 11,
    /// Control plane to process: the swap it confirmed is recorded (exit now) or abandoned (serve
    /// on). Reserved.
    SwapCommit = 12,
    /// Process to control plane: swap in the swapped-out process of its application named in the
    /// payload, for a remote invocation (`docs/remote-invocation.md`). Reserved.
    SwapInRequest = 13,
    /// Control plane to process: the answer to the `SwapInRequest` with the same id (the callee's
    /// address once it is ALLOCATED again, or why not). Reserved.
    SwapInAnswer = 14,
}

impl MessageKind {
    /// Maps a wire byte to a kind; `None` for bytes no version-1 peer may send.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Invoke,
            2 => Self::Response,
            3 => Self::Message,
            4 => Self::MessageAck,
            5 => Self::SwapRequest,
            6 => Self::SwapConfirm,
            7 => Self::PeerUpdate,
            8 => Self::Metrics,
            9 => Self::Ping,
            10 => Self::Pong,
            11 => Self::Hello,
            12 => Self::SwapCommit,
            13 => Self::SwapInRequest,
            14 => Self::SwapInAnswer,
            _ => return None,
        })
    }
}

/// Outcome of an operation, carried by every response. Values equal the C ABI's `PRAAS_*` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The function reported a failure.
    FunctionFailed = 1,
    /// No function of that name in the process.
    UnknownFunction = 2,
    /// The function panicked; the process keeps serving.
    Panicked = 3,
    /// The invocation did not finish before its deadline.
    Timeout = 4,
    /// The frame exceeded the process's maximum; the connection is closed after this response.
    TooLarge = 5,
    /// The bytes did not follow the protocol; the connection is closed after this response.
    Malformed = 6,
    /// Out of workers or buffers; retrying later may succeed.
    Overloaded = 7,
    /// A named thing does not exist.
    NotFound = 8,
    /// A valid request this process does not support.
    Unsupported = 9,
    /// An invalid argument.
    InvalidArgument = 10,
    /// A bug in the runtime.
    Internal = 11,
    /// The destination process cannot receive now: swapped out, not running, or unreachable.
    Unavailable = 12,
    /// The connection did not prove that it belongs to the same application.
    Unauthenticated = 13,
}

impl Status {
    /// Maps a wire or ABI code to a status; unknown codes become [`Status::FunctionFailed`] (a
    /// function may return any non-zero code).
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Ok,
            2 => Self::UnknownFunction,
            3 => Self::Panicked,
            4 => Self::Timeout,
            5 => Self::TooLarge,
            6 => Self::Malformed,
            7 => Self::Overloaded,
            8 => Self::NotFound,
            9 => Self::Unsupported,
            10 => Self::InvalidArgument,
            11 => Self::Internal,
            12 => Self::Unavailable,
            13 => Self::Unauthenticated,
            _ => Self::FunctionFailed,
        }
    }

    /// Maps a status returned by a function through the C ABI.
    pub fn from_abi(code: i32) -> Self {
        u16::try_from(code).map(Self::from_code).unwrap_or(Self::FunctionFailed)
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether a client may retry the same request unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Overloaded)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Ok => "ok",
            Self::FunctionFailed => "function failed",
            Self::UnknownFunction => "unknown function",
            Self::Panicked => "function panicked",
            Self::Timeout => "timeout",
            Self::TooLarge => "frame too large",
            Self::Malformed => "malformed frame",
            Self::Overloaded => "overloaded",
            Self::NotFound => "not found",
            Self::Unsupported => "unsupported",
            Self::InvalidArgument => "invalid argument",
            Self::Internal => "internal error",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
        };
        f.write_str(text)
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes were not `PR`.
    #[error("bad magic {0:02x?}: not a praas frame")]
    BadMagic([u8; 2]),
    /// A protocol version this process does not speak.
    #[error("unsupported protocol version {0} (this process speaks {VERSION})")]
    BadVersion(u8),
    /// A message kind no version-1 peer may send.
    #[error("unknown message kind {0}")]
    BadKind(u8),
    /// `meta_len + payload_len` exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes after the header the frame announced.
        size: u64,
        /// The configured maximum.
        limit: usize,
    },
}

impl FrameError {
    /// The status a response to this error carries.
    pub fn status(&self) -> Status {
        match self {
            Self::TooLarge { .. } => Status::TooLarge,
            _ => Status::Malformed,
        }
    }
}

/// Limits applied while decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Maximum `meta_len + payload_len` of one frame.
    pub max_frame: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self { max_frame: DEFAULT_MAX_FRAME }
    }
}

/// The fixed header of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame carries.
    pub kind: MessageKind,
    /// Bytes of metadata after the header.
    pub meta_len: u16,
    /// Status code on responses; 0 on requests.
    pub status: u16,
    /// The invocation id, chosen by the client and echoed in the response.
    pub id: u64,
    /// On `Invoke`: the deadline in milliseconds from arrival (0 = the process default).
    pub timeout_ms: u32,
    /// Bytes of payload after the metadata.
    pub payload_len: u32,
}

impl Header {
    /// An `Invoke` header.
    pub fn invoke(id: u64, function_len: u16, timeout_ms: u32, payload_len: u32) -> Self {
        Self { kind: MessageKind::Invoke, meta_len: function_len, status: 0, id, timeout_ms, payload_len }
    }

    /// A `Response` header.
    pub fn response(id: u64, status: Status, meta_len: u16, payload_len: u32) -> Self {
        Self { kind: MessageKind::Response, meta_len, status: status.code(), id, timeout_ms: 0, payload_len }
    }

    /// Bytes after the header: metadata plus payload.
    pub fn body_len(&self) -> usize {
        self.meta_len as usize + self.payload_len as usize
    }

    /// Writes the header's 24 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.kind as u8;
        out[4..6].copy_from_slice(&self.meta_len.to_le_bytes());
        out[6..8].copy_from_slice(&self.status.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..20].copy_from_slice(&self.timeout_ms.to_le_bytes());
        out[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Parses and validates a header from untrusted bytes; never panics, allocates nothing.
    pub fn decode(bytes: &[u8; HEADER_LEN], limits: FrameLimits) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if bytes[2] != VERSION {
            return Err(FrameError::BadVersion(bytes[2]));
        }
        let kind = MessageKind::from_u8(bytes[3]).ok_or(FrameError::BadKind(bytes[3]))?;
        let le16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let le32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        let header = Self {
            kind,
            meta_len: le16(4),
            status: le16(6),
            id: u64::from_le_bytes(id),
            timeout_ms: le32(16),
            payload_len: le32(20),
        };
        let size = header.meta_len as u64 + header.payload_len as u64;
        if size > limits.max_frame as u64 {
            return Err(FrameError::TooLarge { size, limit: limits.max_frame });
        }
        Ok(header)
    }
}

/// The id field of the header that starts `bytes`, whatever the rest of the header holds (0 when
/// `bytes` end before it): the id the answer to a frame that failed to decode names.
#[inline]
pub fn header_id(bytes: &[u8]) -> u64 {
    bytes.get(8..16).and_then(|id| <[u8; 8]>::try_from(id).ok()).map_or(0, u64::from_le_bytes)
}

/// A whole frame decoded from a contiguous buffer, borrowing its metadata and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The header.
    pub header: Header,
    /// Metadata bytes (`meta_len` of them).
    pub meta: &'a [u8],
    /// Payload bytes (`payload_len` of them).
    pub payload: &'a [u8],
}

/// Alignment a sender gives the payload of a large frame (see [`alignment_padding`]).
pub const PAYLOAD_ALIGN: usize = 64;
/// Payloads from this size on are aligned; smaller ones are not worth the bytes.
pub const ALIGN_FROM: usize = 16 << 10;
/// NUL bytes a sender adds after `meta_len` bytes of metadata so that a payload of `payload_len`
/// bytes whose memory starts at address `addr` starts at a frame offset congruent to `addr`
/// modulo [`PAYLOAD_ALIGN`]: the kernel then copies it between memory and socket buffers that
/// are aligned alike, which on these machines is several times faster for large payloads
/// (measured in `docs/protocol.md`). 0 below [`ALIGN_FROM`], or where the metadata length field
/// has no room.
pub fn alignment_padding(meta_len: usize, payload_len: usize, addr: usize) -> usize {
    if payload_len < ALIGN_FROM {
        return 0;
    }
    let pad = (addr % PAYLOAD_ALIGN + PAYLOAD_ALIGN - (HEADER_LEN + meta_len) % PAYLOAD_ALIGN) % PAYLOAD_ALIGN;
    if meta_len + pad > u16::MAX as usize {
        return 0;
    }
    pad
}

/// NUL bytes to send as padding (a slice of it).
pub const PADDING: [u8; PAYLOAD_ALIGN] = [0; PAYLOAD_ALIGN];

/// Metadata without the NUL padding a sender may have put at its end: the function name of an
/// `Invoke`, the error text of a `Response`.
pub fn unpadded(meta: &[u8]) -> &[u8] {
    let end = meta.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
    &meta[..end]
}

/// The failure a response frame reports: its status and its error text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status}: {message}")]
#[non_exhaustive]
pub struct RemoteFailure {
    /// What went wrong.
    pub status: Status,
    /// The process's explanation.
    pub message: String,
}

/// What a frame with `header` and metadata `meta` answers, as a client reads it: `Some(Ok(()))`
/// for a response that succeeded (its payload is the output), `Some(Err(_))` for one that failed,
/// `None` for a frame that is no response (a pong).
#[inline]
pub fn response_result(header: &Header, meta: &[u8]) -> Option<Result<(), RemoteFailure>> {
    if header.kind != MessageKind::Response {
        return None;
    }
    let status = Status::from_code(header.status);
    if status == Status::Ok {
        return Some(Ok(()));
    }
    let message = String::from_utf8_lossy(unpadded(meta)).into_owned();
    Some(Err(RemoteFailure { status, message }))
}

/// A whole frame that owns its metadata and payload (what a blocking peer connection reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    /// The header.
    pub header: Header,
    /// Metadata bytes.
    pub meta: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Result of looking for one frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete frame and the number of bytes it occupies.
    Frame(FrameRef<'a>, usize),
    /// Not enough bytes yet; at least this many more are needed.
    Incomplete(usize),
}

/// Decodes the frame at the start of `bytes`: the one decoder of untrusted bytes, used by the
/// transports, the client and the fuzz target.
pub fn decode_frame(bytes: &[u8], limits: FrameLimits) -> Result<Decoded<'_>, FrameError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::Incomplete(HEADER_LEN - bytes.len()));
    };
    let header = Header::decode(head, limits)?;
    let total = HEADER_LEN + header.body_len();
    if bytes.len() < total {
        return Ok(Decoded::Incomplete(total - bytes.len()));
    }
    let meta_end = HEADER_LEN + header.meta_len as usize;
    Ok(Decoded::Frame(FrameRef { header, meta: &bytes[HEADER_LEN..meta_end], payload: &bytes[meta_end..total] }, total))
}

/// Appends a whole frame to `out` (used where one contiguous buffer is wanted: tests, small
/// control messages). Fails if `meta` or `payload` exceed their length fields.
pub fn encode_frame(out: &mut Vec<u8>, mut header: Header, meta: &[u8], payload: &[u8]) -> Result<(), FrameError> {
    let too_large = || FrameError::TooLarge { size: (meta.len() + payload.len()) as u64, limit: u32::MAX as usize };
    header.meta_len = u16::try_from(meta.len()).map_err(|_| too_large())?;
    header.payload_len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    out.reserve(HEADER_LEN + meta.len() + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
    Ok(())
}

// A small send, copied into one buffer and written whole: the kernel then imports no iovecs.

/// Sends of at most this many bytes are copied into one buffer and written whole: the kernel
/// then imports no iovecs (measured: about a tenth of a small round trip's system time).
pub const SMALL_SEND: usize = 2048;

/// The stack buffer a small send is copied into: not zeroed first (only the bytes copied in are
/// ever read), which saves a 2 KiB memset per send.
pub struct FlatBuf([std::mem::MaybeUninit<u8>; SMALL_SEND]);

impl std::fmt::Debug for FlatBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatBuf").field("capacity", &SMALL_SEND).finish_non_exhaustive()
    }
}

impl Default for FlatBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl FlatBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self([std::mem::MaybeUninit::uninit(); SMALL_SEND])
    }

    /// `slices` copied into this buffer, when they hold at most [`SMALL_SEND`] bytes: what a
    /// small send writes.
    pub fn fill<'b>(&'b mut self, slices: &[std::io::IoSlice<'_>]) -> Option<&'b [u8]> {
        self.fill_parts(slices.iter().map(|slice| &**slice))
    }

    /// `parts` copied into this buffer, when they hold at most [`SMALL_SEND`] bytes.
    pub fn fill_parts<'p, 'b>(&'b mut self, parts: impl IntoIterator<Item = &'p [u8]>) -> Option<&'b [u8]> {
        let mut at = 0;
        for part in parts {
            self.0.get_mut(at..at + part.len())?.write_copy_of_slice(part);
            at += part.len();
        }
        // SAFETY: the first `at` bytes were just written (initialised) by the copies above.
        Some(unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), at) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_are_aligned_like_their_memory() {
        assert_eq!(alignment_padding(4, ALIGN_FROM - 1, 0), 0, "small payloads are not padded");
        for meta_len in [0, 1, 4, 39, 40, 41, 100, 1000] {
            for addr in [0usize, 16, 24, 63, 4096 + 16, 0x7f00_1234_5678] {
                let pad = alignment_padding(meta_len, 1 << 20, addr);
                assert!(pad < PAYLOAD_ALIGN);
                assert_eq!((HEADER_LEN + meta_len + pad) % PAYLOAD_ALIGN, addr % PAYLOAD_ALIGN, "{meta_len} {addr}");
            }
        }
        assert_eq!(alignment_padding(u16::MAX as usize, 1 << 20, 7), 0, "no room in the length field");
        assert_eq!(unpadded(b"echo\0\0\0"), b"echo");
        assert_eq!(unpadded(b"echo"), b"echo");
        assert_eq!(unpadded(b"\0\0"), b"");
        assert_eq!(unpadded(b""), b"");
    }
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = MessageKind> {
        (1u8..=14).prop_map(|b| MessageKind::from_u8(b).expect("every byte in 1..=14 is a kind"))
    }

    proptest! {
        #[test]
        fn frame_round_trips(kind in kinds(), status: u16, id: u64, timeout_ms: u32,
                             meta in proptest::collection::vec(any::<u8>(), 0..300),
                             payload in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let header = Header { kind, meta_len: 0, status, id, timeout_ms, payload_len: 0 };
            let mut buf = Vec::new();
            encode_frame(&mut buf, header, &meta, &payload).unwrap();
            let limits = FrameLimits::default();
            match decode_frame(&buf, limits).unwrap() {
                Decoded::Frame(frame, used) => {
                    prop_assert_eq!(used, buf.len());
                    prop_assert_eq!(frame.header.kind, kind);
                    prop_assert_eq!(frame.header.status, status);
                    prop_assert_eq!(frame.header.id, id);
                    prop_assert_eq!(frame.header.timeout_ms, timeout_ms);
                    prop_assert_eq!(frame.meta, &meta[..]);
                    prop_assert_eq!(frame.payload, &payload[..]);
                }
                Decoded::Incomplete(_) => prop_assert!(false, "complete frame decoded as incomplete"),
            }
            // Every strict prefix is incomplete and says how much is missing.
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, buf.len() - 1] {
                if cut < buf.len() {
                    prop_assert_eq!(decode_frame(&buf[..cut], limits).unwrap(), Decoded::Incomplete(if cut < HEADER_LEN { HEADER_LEN - cut } else { buf.len() - cut }));
                }
            }
        }

        #[test]
        fn padded_names_decode_to_the_name_and_align_the_payload(
            name in "[a-z_][a-z0-9_]{0,40}",
            payload_len in 0usize..(1 << 21),
            addr in any::<usize>(),
        ) {
            let pad = alignment_padding(name.len(), payload_len, addr);
            prop_assert!(pad < PAYLOAD_ALIGN);
            if payload_len >= ALIGN_FROM {
                prop_assert_eq!((HEADER_LEN + name.len() + pad) % PAYLOAD_ALIGN, addr % PAYLOAD_ALIGN);
            } else {
                prop_assert_eq!(pad, 0);
            }
            let meta = [name.as_bytes(), &PADDING[..pad]].concat();
            let mut buf = Vec::new();
            encode_frame(&mut buf, Header::invoke(1, 0, 0, 0), &meta, &[7u8; 3]).unwrap();
            match decode_frame(&buf, FrameLimits::default()).unwrap() {
                Decoded::Frame(frame, _) => prop_assert_eq!(unpadded(frame.meta), name.as_bytes()),
                Decoded::Incomplete(_) => prop_assert!(false, "complete frame decoded as incomplete"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..1000) {
            let limits = FrameLimits { max_frame: max };
            if let Ok(Decoded::Frame(frame, used)) = decode_frame(&bytes, limits) {
                prop_assert!(used <= bytes.len());
                prop_assert!(frame.header.body_len() <= max);
            }
        }
    }

    #[test]
    fn the_example_in_docs_protocol_md_is_exact() {
        let mut invoke = Vec::new();
        encode_frame(&mut invoke, Header::invoke(7, 0, 0, 0), b"echo", b"hi").unwrap();
        let expected: [u8; 30] = [
            0x50, 0x52, 0x01, 0x01, 0x04, 0x00, 0x00, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, b'e',
            b'c', b'h', b'o', b'h', b'i',
        ];
        assert_eq!(invoke, expected);
        let mut response = Vec::new();
        encode_frame(&mut response, Header::response(7, Status::Ok, 0, 0), b"", b"hi").unwrap();
        assert_eq!(response[..4], [0x50, 0x52, 0x01, 0x02]);
        assert_eq!(response[20..], [0x02, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn the_id_of_a_broken_header_is_read_where_it_would_be() {
        let mut head = Header::invoke(0xfeed_beef_0000_0001, 3, 0, 0).encode();
        head[0] = 0;
        head[3] = 99;
        assert_eq!(header_id(&head), 0xfeed_beef_0000_0001);
        assert_eq!(header_id(&head[..16]), 0xfeed_beef_0000_0001);
        assert_eq!(header_id(&head[..15]), 0, "too short to hold an id");
        assert_eq!(header_id(&[]), 0);
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let header = Header::invoke(1, 4, 0, u32::MAX);
        let err = Header::decode(&header.encode(), FrameLimits { max_frame: 1024 }).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { size: u32::MAX as u64 + 4, limit: 1024 });
        assert_eq!(err.status(), Status::TooLarge);
    }

    #[test]
    fn bad_magic_version_and_kind_are_named() {
        let good = Header::invoke(1, 0, 0, 0).encode();
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(Header::decode(&bad, FrameLimits::default()), Err(FrameError::BadMagic(_))));
        let mut bad = good;
        bad[2] = 9;
        assert_eq!(Header::decode(&bad, FrameLimits::default()), Err(FrameError::BadVersion(9)));
        let mut bad = good;
        bad[3] = 0;
        assert_eq!(Header::decode(&bad, FrameLimits::default()), Err(FrameError::BadKind(0)));
    }

    #[test]
    fn status_codes_match_the_c_abi() {
        assert_eq!(Status::Ok.code() as i32, praas_ffi::PRAAS_OK);
        assert_eq!(Status::FunctionFailed.code() as i32, praas_ffi::PRAAS_ERR_FUNCTION);
        assert_eq!(Status::UnknownFunction.code() as i32, praas_ffi::PRAAS_ERR_UNKNOWN_FUNCTION);
        assert_eq!(Status::Panicked.code() as i32, praas_ffi::PRAAS_ERR_PANICKED);
        assert_eq!(Status::Timeout.code() as i32, praas_ffi::PRAAS_ERR_TIMEOUT);
        assert_eq!(Status::TooLarge.code() as i32, praas_ffi::PRAAS_ERR_TOO_LARGE);
        assert_eq!(Status::Malformed.code() as i32, praas_ffi::PRAAS_ERR_MALFORMED);
        assert_eq!(Status::Overloaded.code() as i32, praas_ffi::PRAAS_ERR_OVERLOADED);
        assert_eq!(Status::NotFound.code() as i32, praas_ffi::PRAAS_ERR_NOT_FOUND);
        assert_eq!(Status::Unsupported.code() as i32, praas_ffi::PRAAS_ERR_UNSUPPORTED);
        assert_eq!(Status::InvalidArgument.code() as i32, praas_ffi::PRAAS_ERR_INVALID_ARGUMENT);
        assert_eq!(Status::Internal.code() as i32, praas_ffi::PRAAS_ERR_INTERNAL);
        assert_eq!(Status::Unavailable.code() as i32, praas_ffi::PRAAS_ERR_UNAVAILABLE);
        assert_eq!(Status::Unauthenticated.code() as i32, praas_ffi::PRAAS_ERR_UNAUTHENTICATED);
        for code in 0..=13u16 {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::from_abi(-5), Status::FunctionFailed);
        assert_eq!(Status::from_abi(77), Status::FunctionFailed);
    }
}
