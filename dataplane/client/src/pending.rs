//! The pending-answer bookkeeping both clients share: [`Early`], the answers that arrived while
//! the caller waited for another id, and [`completion`], which turns a response frame into a
//! [`Completion`].

use praas_wire::idmap::IdMap;
use praas_wire::protocol::{Header, MessageKind, Status};

use crate::{ClientError, Completion};

/// Answers received while waiting for another id, kept until asked for.
#[derive(Debug, Default)]
pub(crate) struct Early(IdMap<u64, Result<Vec<u8>, ClientError>>);

impl Early {
    /// Whether no answer is kept.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many answers are kept.
    #[cfg(feature = "rdma")]
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The kept answer to `id`, taken out. (An empty map is not hashed into: most waits find
    /// nothing early.)
    #[inline]
    pub(crate) fn take(&mut self, id: u64) -> Option<Result<Vec<u8>, ClientError>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.remove(&id)
    }

    /// Any kept answer, taken out.
    #[inline]
    pub(crate) fn take_any(&mut self) -> Option<Completion> {
        let &id = self.0.keys().next()?;
        let result = self.0.remove(&id).expect("key just seen");
        Some(Completion { id, result })
    }

    /// Keeps `completion` for a later wait.
    #[inline]
    pub(crate) fn keep(&mut self, completion: Completion) {
        self.0.insert(completion.id, completion.result);
    }
}

/// Turns a response frame into a completion; `None` for frames a client ignores (pongs). The
/// payload becomes the output: moved when it is owned already, copied when borrowed.
#[inline]
pub(crate) fn completion(header: Header, meta: &[u8], payload: impl Into<Vec<u8>>) -> Option<Completion> {
    match header.kind {
        MessageKind::Response => {
            let status = Status::from_code(header.status);
            let result = if status == Status::Ok {
                Ok(payload.into())
            } else {
                let text = praas_wire::protocol::unpadded(meta);
                Err(ClientError::Remote { status, message: String::from_utf8_lossy(text).into_owned() })
            };
            Some(Completion { id: header.id, result })
        }
        _ => None,
    }
}
