//! The index and flag words of a ring region, as both ends reach them.

use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use vmdedup_protocol::abi::ring_off;

use super::mapping::SharedMapping;
use super::RingError;

/// Pointers to the shared index and flag words of one ring region.
///
/// # Invariants
/// Every pointer points into the mapping it was made from (by
/// [`SharedMapping::word`]), in bounds and 4-aligned. The owner keeps that
/// mapping alive for as long as it keeps this value (see [`word!`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Words {
    pub(crate) sq_head: NonNull<AtomicU32>,
    pub(crate) sq_tail: NonNull<AtomicU32>,
    pub(crate) cq_head: NonNull<AtomicU32>,
    pub(crate) cq_tail: NonNull<AtomicU32>,
    pub(crate) eq_head: NonNull<AtomicU32>,
    pub(crate) eq_tail: NonNull<AtomicU32>,
    pub(crate) host_flags: NonNull<AtomicU32>,
    pub(crate) guest_flags: NonNull<AtomicU32>,
    pub(crate) guest_attached: NonNull<AtomicU32>,
}

impl Words {
    /// Locates every word in `map`; fails if the region is too small.
    pub(crate) fn new(map: &SharedMapping) -> Result<Words, RingError> {
        let w = |off| {
            map.word(off)
                .map(NonNull::from)
                .ok_or(RingError::BadSize(map.len() as u64))
        };
        // INVARIANT: each pointer comes from `map.word`, which checks bounds
        // and alignment.
        Ok(Words {
            sq_head: w(ring_off::SQ_HEAD)?,
            sq_tail: w(ring_off::SQ_TAIL)?,
            cq_head: w(ring_off::CQ_HEAD)?,
            cq_tail: w(ring_off::CQ_TAIL)?,
            eq_head: w(ring_off::EQ_HEAD)?,
            eq_tail: w(ring_off::EQ_TAIL)?,
            host_flags: w(ring_off::HOST_FLAGS)?,
            guest_flags: w(ring_off::GUEST_FLAGS)?,
            guest_attached: w(ring_off::GUEST_ATTACHED)?,
        })
    }
}

/// `word!(self.sq_head)`: the shared word, for a value with a `words: Words`
/// field and a `map` field holding the mapping those words point into.
macro_rules! word {
    ($self:ident . $w:ident) => {
        // SAFETY: by the `Words` invariant the pointer is valid and aligned
        // while `self.map` lives, which it does for as long as `self`.
        unsafe { $self.words.$w.as_ref() }
    };
}
pub(crate) use word;
