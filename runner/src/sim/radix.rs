//! The KV pool and its token-level radix prefix cache (SGLang's `RadixCache`).
//!
//! The pool holds `capacity` token slots. A slot is either *private* to a running request
//! (its uncached prompt tokens and its output so far) or belongs to the *tree*: the token
//! sequences of finished requests, shared by every later request that starts with them.
//! Invariant: `tree tokens + private tokens ≤ capacity`.
//!
//! - [`RadixCache::match_prefix`] walks the tree along a prompt and returns the matched
//!   length; it **locks** the matched path (reference count + 1 on each node up to the root)
//!   so it cannot be evicted while the request runs, and marks it used now (LRU).
//!   A node matched only partly is split, as SGLang does.
//! - [`RadixCache::insert`] adds a finished request's prompt + output; only tokens not
//!   already in the tree take new slots.
//! - Eviction frees whole leaves whose reference count is 0, least recently used first, until
//!   enough slots are free; locked nodes are never evicted.
//! - [`RadixCache::reset`] empties the tree (`/flush_cache`); a disabled cache
//!   (`--disable-radix-cache`) matches nothing and stores nothing.

use std::collections::BTreeSet;

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug, Default)]
struct Node {
    tokens: Vec<u32>,
    parent: NodeId,
    /// (first token, child): few children per node in practice, so a scanned vector.
    children: Vec<(u32, NodeId)>,
    lock_ref: u32,
    last_access: u64,
}

/// A locked matched prefix. Hand it back to [`RadixCache::unlock`] when the request ends.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a matched prefix stays locked until it is unlocked"]
pub struct PrefixMatch {
    /// Tokens matched (the request's `cached_tokens`).
    pub len: usize,
    node: NodeId,
}

/// The KV pool with its radix prefix cache.
#[derive(Debug)]
pub struct RadixCache {
    capacity: u64,
    enabled: bool,
    private: u64,
    tree_tokens: u64,
    /// Tree tokens in nodes with `lock_ref == 0`.
    evictable: u64,
    nodes: Vec<Node>,
    free_ids: Vec<NodeId>,
    /// Evictable leaves keyed by (last access, id): the first is the LRU victim.
    leaves: BTreeSet<(u64, NodeId)>,
    clock: u64,
    evicted_total: u64,
}

/// Length of the common prefix of `edge` and `rest` (slice equality first: a memcmp).
fn common_prefix(edge: &[u32], rest: &[u32]) -> usize {
    if edge.len() <= rest.len() && edge == &rest[..edge.len()] {
        return edge.len();
    }
    edge.iter().zip(rest).take_while(|(a, b)| a == b).count()
}

impl RadixCache {
    /// A pool of `capacity` tokens; `enabled == false` is `--disable-radix-cache`.
    pub fn new(capacity: u64, enabled: bool) -> RadixCache {
        RadixCache {
            capacity,
            enabled,
            private: 0,
            tree_tokens: 0,
            evictable: 0,
            nodes: vec![Node::default()],
            free_ids: Vec::new(),
            leaves: BTreeSet::new(),
            clock: 0,
            evicted_total: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Slots in use (tree + private).
    pub fn used(&self) -> u64 {
        self.tree_tokens + self.private
    }

    /// Tokens held by the tree.
    pub fn cached(&self) -> u64 {
        self.tree_tokens
    }

    /// Tree tokens that eviction could free now.
    pub fn evictable(&self) -> u64 {
        self.evictable
    }

    /// Slots a request could get now: free plus evictable.
    pub fn available(&self) -> u64 {
        self.capacity - self.used() + self.evictable
    }

    /// Tokens evicted since creation.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn is_evictable_leaf(&self, id: NodeId) -> bool {
        let n = &self.nodes[id as usize];
        id != ROOT && n.children.is_empty() && n.lock_ref == 0
    }

    fn child(&self, id: NodeId, token: u32) -> Option<NodeId> {
        self.nodes[id as usize]
            .children
            .iter()
            .find(|(t, _)| *t == token)
            .map(|&(_, c)| c)
    }

    fn touch(&mut self, id: NodeId, now: u64) {
        let old = self.nodes[id as usize].last_access;
        if self.leaves.remove(&(old, id)) {
            self.leaves.insert((now, id));
        }
        self.nodes[id as usize].last_access = now;
    }

    /// Split node `id` after its first `at` tokens; returns the new upper node.
    fn split(&mut self, id: NodeId, at: usize) -> NodeId {
        let node = &mut self.nodes[id as usize];
        let tail = node.tokens.split_off(at);
        let head = std::mem::replace(&mut node.tokens, tail);
        let (parent, lock_ref, last_access) = (node.parent, node.lock_ref, node.last_access);
        let first_of_tail = node.tokens[0];
        let upper = self.alloc_node(Node {
            tokens: head,
            parent,
            children: vec![(first_of_tail, id)],
            lock_ref,
            last_access,
        });
        self.nodes[id as usize].parent = upper;
        let first = self.nodes[upper as usize].tokens[0];
        let slot = self.nodes[parent as usize]
            .children
            .iter_mut()
            .find(|(t, _)| *t == first)
            .expect("split node is its parent's child");
        slot.1 = upper;
        upper
    }

    fn alloc_node(&mut self, node: Node) -> NodeId {
        match self.free_ids.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// Length of the longest cached prefix of `tokens`, without locking or touching anything
    /// (the `lpm` policy's sort key).
    pub fn prefix_len(&self, tokens: &[u32]) -> usize {
        if !self.enabled {
            return 0;
        }
        let (mut node, mut len) = (ROOT, 0);
        while len < tokens.len() {
            let Some(child) = self.child(node, tokens[len]) else {
                break;
            };
            let edge = &self.nodes[child as usize].tokens;
            let common = common_prefix(edge, &tokens[len..]);
            len += common;
            if common < edge.len() {
                break;
            }
            node = child;
        }
        len
    }

    /// Longest cached prefix of `tokens`: walks (splitting a partly matched node), marks the
    /// path used, and locks it. Disabled: always 0.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> PrefixMatch {
        if !self.enabled {
            return PrefixMatch { len: 0, node: ROOT };
        }
        let now = self.tick();
        let mut node = ROOT;
        let mut len = 0;
        while len < tokens.len() {
            let Some(child) = self.child(node, tokens[len]) else {
                break;
            };
            let edge = &self.nodes[child as usize].tokens;
            let common = common_prefix(edge, &tokens[len..]);
            if common < edge.len() {
                node = self.split(child, common);
                len += common;
                self.touch(node, now);
                break;
            }
            node = child;
            len += common;
            self.touch(node, now);
        }
        self.lock(node);
        PrefixMatch { len, node }
    }

    fn lock(&mut self, mut id: NodeId) {
        while id != ROOT {
            if self.is_evictable_leaf(id) {
                let key = (self.nodes[id as usize].last_access, id);
                self.leaves.remove(&key);
            }
            let n = &mut self.nodes[id as usize];
            if n.lock_ref == 0 {
                self.evictable -= n.tokens.len() as u64;
            }
            n.lock_ref += 1;
            id = n.parent;
        }
    }

    /// Release a matched prefix's lock (the request finished, was aborted or retracted).
    pub fn unlock(&mut self, m: PrefixMatch) {
        let mut id = m.node;
        while id != ROOT {
            let n = &mut self.nodes[id as usize];
            n.lock_ref -= 1;
            if n.lock_ref == 0 {
                self.evictable += n.tokens.len() as u64;
            }
            let parent = n.parent;
            if self.is_evictable_leaf(id) {
                self.leaves
                    .insert((self.nodes[id as usize].last_access, id));
            }
            id = parent;
        }
    }

    /// Take `n` private slots, evicting LRU unreferenced tree tokens if needed.
    /// `false` (nothing taken) when free + evictable < `n`.
    pub fn alloc(&mut self, n: u64) -> bool {
        if self.available() < n {
            return false;
        }
        let free = self.capacity - self.used();
        if free < n {
            self.evict(n - free);
        }
        self.private += n;
        true
    }

    /// Give back `n` private slots.
    pub fn release(&mut self, n: u64) {
        debug_assert!(
            n <= self.private,
            "releasing {n} of {} private slots",
            self.private
        );
        self.private -= n.min(self.private);
    }

    /// Evict at least `n` tokens (whole leaves, LRU first, unreferenced only) if there are
    /// that many; returns the tokens evicted.
    pub fn evict(&mut self, n: u64) -> u64 {
        let mut freed = 0;
        while freed < n {
            let Some((_, id)) = self.leaves.pop_first() else {
                break;
            };
            let node = std::mem::take(&mut self.nodes[id as usize]);
            let len = node.tokens.len() as u64;
            freed += len;
            self.tree_tokens -= len;
            self.evictable -= len;
            let parent = node.parent;
            self.nodes[parent as usize]
                .children
                .retain(|&(_, c)| c != id);
            self.free_ids.push(id);
            if self.is_evictable_leaf(parent) {
                self.leaves
                    .insert((self.nodes[parent as usize].last_access, parent));
            }
        }
        self.evicted_total += freed;
        freed
    }

    /// Insert a token sequence (a finished request's prompt + output). Only its part not
    /// already cached takes slots, evicting if needed; if the pool cannot hold it all, the
    /// longest prefix that fits is kept. Returns the tokens added. Disabled: stores nothing.
    pub fn insert(&mut self, tokens: &[u32]) -> u64 {
        let (added, m) = self.insert_locked(tokens);
        self.unlock(m);
        added
    }

    /// [`insert`](Self::insert), then lock the stored prefix of `tokens` as
    /// [`match_prefix`](Self::match_prefix) would (one walk instead of two).
    pub fn insert_locked(&mut self, tokens: &[u32]) -> (u64, PrefixMatch) {
        if !self.enabled || tokens.is_empty() {
            return (0, PrefixMatch { len: 0, node: ROOT });
        }
        let m = self.match_prefix(tokens);
        let (len, parent) = (m.len, m.node);
        if len == tokens.len() {
            return (0, m);
        }
        let want = (tokens.len() - len) as u64;
        let free = self.capacity - self.used();
        if free < want {
            self.evict(want - free);
        }
        let room = (self.capacity - self.used()).min(want) as usize;
        if room == 0 {
            return (0, m);
        }
        let now = self.clock;
        let leaf = self.alloc_node(Node {
            tokens: tokens[len..len + room].to_vec(),
            parent,
            children: Vec::new(),
            lock_ref: 0,
            last_access: now,
        });
        self.nodes[parent as usize]
            .children
            .push((tokens[len], leaf));
        self.tree_tokens += room as u64;
        self.evictable += room as u64;
        self.leaves.insert((now, leaf));
        self.lock(leaf);
        self.unlock(m);
        (
            room as u64,
            PrefixMatch {
                len: len + room,
                node: leaf,
            },
        )
    }

    /// Empty the tree (`/flush_cache`). Refused (`false`) while any prefix is locked.
    pub fn reset(&mut self) -> bool {
        if self.evictable != self.tree_tokens {
            return false;
        }
        self.nodes.truncate(1);
        self.nodes[0] = Node::default();
        self.free_ids.clear();
        self.leaves.clear();
        self.tree_tokens = 0;
        self.evictable = 0;
        true
    }

    /// Check every internal invariant (tests and debug builds).
    #[cfg(test)]
    fn check(&self) {
        assert!(
            self.used() <= self.capacity,
            "{} > {}",
            self.used(),
            self.capacity
        );
        let free: std::collections::HashSet<_> = self.free_ids.iter().copied().collect();
        let (mut tree, mut evictable, mut leaves) = (0, 0, BTreeSet::new());
        for (id, n) in self.nodes.iter().enumerate().skip(1) {
            let id = id as NodeId;
            if free.contains(&id) {
                continue;
            }
            tree += n.tokens.len() as u64;
            if n.lock_ref == 0 {
                evictable += n.tokens.len() as u64;
            } else {
                assert!(n.parent == ROOT || self.nodes[n.parent as usize].lock_ref > 0);
            }
            if self.is_evictable_leaf(id) {
                leaves.insert((n.last_access, id));
            }
        }
        assert_eq!(tree, self.tree_tokens);
        assert_eq!(evictable, self.evictable);
        assert_eq!(leaves, self.leaves);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(base: u32, n: u32) -> Vec<u32> {
        (base..base + n).collect()
    }

    #[test]
    fn match_after_insert_returns_the_inserted_prefix_and_splits() {
        let mut c = RadixCache::new(100, true);
        assert_eq!(c.insert(&seq(0, 10)), 10);
        let m = c.match_prefix(&[0, 1, 2, 3, 99]);
        assert_eq!(m.len, 4);
        c.unlock(m);
        // A second sequence sharing 4 tokens adds only its own 3.
        assert_eq!(c.insert(&[0, 1, 2, 3, 7, 8, 9]), 3);
        assert_eq!(c.cached(), 13);
        c.check();
    }

    #[test]
    fn locked_prefixes_survive_eviction_and_lru_goes_first() {
        let mut c = RadixCache::new(30, true);
        c.insert(&seq(0, 10)); // A
        c.insert(&seq(100, 10)); // B
        c.insert(&seq(200, 10)); // C
        let a = c.match_prefix(&seq(0, 10)); // A used last and locked
        assert_eq!(c.evictable(), 20);
        assert!(c.alloc(10)); // evicts B, the least recently used
        let b = c.match_prefix(&seq(100, 10));
        assert_eq!(b.len, 0);
        c.unlock(b);
        assert!(!c.alloc(21), "A is locked, only C is evictable");
        assert!(c.alloc(10));
        assert_eq!(c.match_prefix(&seq(200, 10)).len, 0);
        c.unlock(a);
        c.check();
    }

    #[test]
    fn disabled_cache_matches_nothing() {
        let mut c = RadixCache::new(100, false);
        assert_eq!(c.insert(&seq(0, 10)), 0);
        let m = c.match_prefix(&seq(0, 10));
        assert_eq!(m.len, 0);
        c.unlock(m);
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn reset_empties_the_tree_unless_locked() {
        let mut c = RadixCache::new(100, true);
        c.insert(&seq(0, 10));
        let m = c.match_prefix(&seq(0, 5));
        assert!(!c.reset());
        c.unlock(m);
        assert!(c.reset());
        assert_eq!(c.cached(), 0);
        let m = c.match_prefix(&seq(0, 10));
        assert_eq!(m.len, 0);
        c.unlock(m);
        c.check();
    }

    #[test]
    fn insert_keeps_the_prefix_that_fits() {
        let mut c = RadixCache::new(8, true);
        assert!(c.alloc(3));
        assert_eq!(c.insert(&seq(0, 10)), 5);
        assert_eq!(c.used(), 8);
        c.check();
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Match a sequence (from a small alphabet so prefixes collide) and hold the lock.
        Match(Vec<u32>),
        /// Release the i-th held lock.
        Unlock(usize),
        Insert(Vec<u32>),
        /// Insert and hold the lock on the stored prefix.
        InsertLocked(Vec<u32>),
        Alloc(u64),
        Release(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let tokens = prop::collection::vec(0u32..3, 1..12);
        prop_oneof![
            tokens.clone().prop_map(Op::Match),
            (0usize..8).prop_map(Op::Unlock),
            tokens.clone().prop_map(Op::Insert),
            tokens.prop_map(Op::InsertLocked),
            (0u64..10).prop_map(Op::Alloc),
            (0u64..10).prop_map(Op::Release),
        ]
    }

    /// Every token sequence currently in the tree (root-to-leaf paths).
    fn paths(c: &RadixCache) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, Vec::new())];
        while let Some((id, prefix)) = stack.pop() {
            let n = &c.nodes[id as usize];
            if n.children.is_empty() && id != ROOT {
                out.push(prefix.clone());
            }
            for &(_, ch) in &n.children {
                let mut p = prefix.clone();
                p.extend(&c.nodes[ch as usize].tokens);
                stack.push((ch, p));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_operation_sequence(
            capacity in 1u64..40,
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let mut c = RadixCache::new(capacity, true);
            let mut held: Vec<(Vec<u32>, PrefixMatch)> = Vec::new();
            let mut private = 0;
            for op in ops {
                match op {
                    Op::Match(t) => {
                        let peek = c.prefix_len(&t);
                        let m = c.match_prefix(&t);
                        prop_assert_eq!(peek, m.len);
                        // cached ≤ prompt, and the match is a real prefix of a stored path.
                        prop_assert!(m.len <= t.len());
                        if m.len > 0 {
                            prop_assert!(paths(&c).iter().any(|p| p.starts_with(&t[..m.len])));
                        }
                        held.push((t, m));
                    }
                    Op::Unlock(i) => {
                        if i < held.len() {
                            let (_, m) = held.remove(i);
                            c.unlock(m);
                        }
                    }
                    Op::Insert(t) => {
                        let m = c.match_prefix(&t);
                        let (known, missing) = (m.len, (t.len() - m.len) as u64);
                        c.unlock(m);
                        let room = c.capacity() - c.used();
                        let added = c.insert(&t);
                        // Only the missing part takes slots, all of it when there is room.
                        prop_assert!(added <= missing);
                        if room >= missing {
                            prop_assert_eq!(added, missing);
                        }
                        // Match after insert returns the inserted prefix.
                        let m = c.match_prefix(&t);
                        prop_assert_eq!(m.len, known + added as usize);
                        c.unlock(m);
                    }
                    Op::InsertLocked(t) => {
                        let known = c.prefix_len(&t);
                        let (added, m) = c.insert_locked(&t);
                        prop_assert_eq!(m.len, known + added as usize);
                        held.push((t, m));
                    }
                    Op::Alloc(n) => {
                        let available = c.available();
                        let ok = c.alloc(n);
                        prop_assert_eq!(ok, available >= n);
                        if ok { private += n; }
                    }
                    Op::Release(n) => {
                        let n = n.min(private);
                        c.release(n);
                        private -= n;
                    }
                }
                // Capacity never exceeded; counters consistent; locked paths intact.
                c.check();
                for (t, m) in held.iter().filter(|(_, m)| m.len > 0) {
                    prop_assert!(paths(&c).iter().any(|p| p.starts_with(&t[..m.len])),
                        "a locked prefix was evicted");
                }
            }
        }

        #[test]
        fn eviction_follows_lru_order(n in 2usize..8, touched in 0usize..8) {
            // n disjoint sequences, inserted in order; one is touched later.
            let touched = touched % n;
            let mut c = RadixCache::new(10 * n as u64, true);
            for i in 0..n {
                c.insert(&seq(100 * i as u32, 10));
            }
            let m = c.match_prefix(&seq(100 * touched as u32, 10));
            c.unlock(m);
            // Evicting one sequence's worth removes the least recently used one.
            prop_assert_eq!(c.evict(10), 10);
            let victim = if touched == 0 { 1 } else { 0 };
            for i in 0..n {
                let m = c.match_prefix(&seq(100 * i as u32, 10));
                prop_assert_eq!(m.len == 0, i == victim, "sequence {}", i);
                c.unlock(m);
            }
        }
    }
}
