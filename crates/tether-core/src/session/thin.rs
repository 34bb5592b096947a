//! [`Thin`]: a collection that costs one pointer while it is empty.
//!
//! A connection spends most of its life idle, and an idle connection's
//! queues (its outbox, its session's in-flight and queued messages) are
//! empty. Inline, each `VecDeque` header is 32 bytes of every connection
//! even so, and its buffer stays allocated after it drains. A `Thin` holds
//! the collection behind a pointer that is null while empty, so an idle
//! connection pays 8 bytes per queue (bench/RESULTS.md, "Where an idle
//! connection's bytes go").
//!
//! Reading an empty `Thin` sees a shared empty collection and allocates
//! nothing. The first mutable access allocates; [`Thin::release`] gives the
//! memory back once the collection is empty again. Owners call it where a
//! queue drains (a written outbox, an acknowledged window), so a busy
//! connection keeps its buffers and an idle one holds none.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

/// A collection with a shared empty value, so reading an absent one needs
/// no allocation.
pub trait Collection: Default + 'static {
    /// The empty collection every absent [`Thin`] reads as.
    const EMPTY: &'static Self;
    /// Whether it holds nothing.
    fn holds_nothing(&self) -> bool;
}

impl<T: 'static> Collection for VecDeque<T> {
    const EMPTY: &'static Self = &VecDeque::new();
    fn holds_nothing(&self) -> bool {
        self.is_empty()
    }
}

impl<T: 'static> Collection for Vec<T> {
    const EMPTY: &'static Self = &Vec::new();
    fn holds_nothing(&self) -> bool {
        self.is_empty()
    }
}

/// See the module documentation.
pub struct Thin<C: Collection>(Option<Box<C>>);

impl<C: Collection> Thin<C> {
    /// An empty collection, unallocated.
    pub const fn new() -> Self {
        Thin(None)
    }

    /// Frees the collection if it is empty. Cheap when there is nothing to
    /// free, so it can sit on paths that run once per batch.
    #[inline]
    pub fn release(&mut self) {
        if self.0.as_deref().is_some_and(C::holds_nothing) {
            self.0 = None;
        }
    }

    /// Whether memory is held.
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl<C: Collection> Default for Thin<C> {
    fn default() -> Self {
        Thin::new()
    }
}

impl<C: Collection> From<C> for Thin<C> {
    fn from(c: C) -> Self {
        let mut t = Thin(Some(Box::new(c)));
        t.release();
        t
    }
}

impl<C: Collection> Deref for Thin<C> {
    type Target = C;
    #[inline]
    fn deref(&self) -> &C {
        self.0.as_deref().unwrap_or(C::EMPTY)
    }
}

impl<C: Collection> DerefMut for Thin<C> {
    /// Allocates the collection if it was absent.
    #[inline]
    fn deref_mut(&mut self) -> &mut C {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<'a, C: Collection> IntoIterator for &'a Thin<C>
where
    &'a C: IntoIterator,
{
    type Item = <&'a C as IntoIterator>::Item;
    type IntoIter = <&'a C as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (**self).into_iter()
    }
}

impl<C: Collection + std::fmt::Debug> std::fmt::Debug for Thin<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_allocate_nothing_and_release_frees_only_when_empty() {
        let mut q: Thin<VecDeque<u32>> = Thin::new();
        assert_eq!(std::mem::size_of_val(&q), 8);
        assert!(q.is_empty() && q.iter().next().is_none());
        assert!(!q.is_allocated(), "a read does not allocate");
        q.push_back(1);
        q.push_back(2);
        q.release();
        assert!(q.is_allocated(), "a non-empty queue is kept");
        assert_eq!(q.pop_front(), Some(1));
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [2]);
        q.pop_front();
        q.release();
        assert!(!q.is_allocated(), "an empty one is freed");
        let v: Thin<Vec<u16>> = Vec::new().into();
        assert!(!v.is_allocated());
        let v: Thin<Vec<u16>> = vec![7].into();
        assert_eq!(*v, [7]);
    }
}
