//! The subscription index: a trie over topic levels.
//!
//! Read-mostly: publishers match under a read lock held by the router;
//! SUBSCRIBE and UNSUBSCRIBE take the write lock briefly.
//!
//! Matching a topic of L levels looks up L names, never a wildcard: `+`
//! and `#` children sit in fields of their own. Names are hashed with
//! foldhash under a per-process random seed instead of SipHash (issue 25:
//! SipHash was 9 % of a QoS 0 fan-out's instructions). The seed keeps
//! HashDoS resistance against clients choosing topic and filter names,
//! which is what a keyed hash buys; foldhash does not claim SipHash's
//! cryptographic strength, and a crafted collision would slow lookups in
//! one node's map, not break them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::{QoS, SubscriptionOptions, TopicFilter};
use crate::session::Session;

/// One subscription in the index.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Granted options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
    /// For a member of a share group: its shared subscription
    /// (`$share/{group}/{filter}`), which deliveries through it carry.
    pub share: Option<Arc<TopicFilter>>,
}

/// A match found for a topic: one subscription of one session.
#[derive(Debug, Clone)]
pub struct Match {
    /// The session to deliver to.
    pub session: Arc<Session>,
    /// Granted QoS of the subscription.
    pub qos: QoS,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// No Local.
    pub no_local: bool,
    /// Subscription identifier.
    pub id: Option<u32>,
    /// The shared subscription, when the match is a share group's member.
    pub share: Option<Arc<TopicFilter>>,
}

impl Match {
    fn from(sub: &Subscriber) -> Match {
        Match {
            session: sub.session.clone(),
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            no_local: sub.options.no_local,
            id: sub.id,
            share: sub.share.clone(),
        }
    }
}

/// A `$share/{group}/...` group: each message goes to one connected member.
#[derive(Debug, Default)]
struct ShareGroup {
    members: Vec<Subscriber>,
    /// Round-robin cursor; atomic so matching needs only the read lock.
    next: AtomicUsize,
}

/// The hasher of the trie's maps: foldhash with a random seed per process
/// (see the module's documentation).
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Node {
    /// Children by level name, wildcards excepted.
    children: HashMap<Box<str>, Node, Hasher>,
    /// The `+` child.
    plus: Option<Box<Node>>,
    /// The `#` child.
    hash: Option<Box<Node>>,
    subscribers: Vec<Subscriber>,
    groups: HashMap<Box<str>, ShareGroup, Hasher>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.groups.is_empty()
    }

    fn child(&self, level: &str) -> Option<&Node> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_default(),
            "#" => self.hash.get_or_insert_default(),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => drop(self.children.remove(level)),
        }
    }
}

/// The subscription trie.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    root: Node,
    count: usize,
}

impl Trie {
    /// Inserts or replaces the subscription of `sub.session` to `filter`
    /// (`group` for shared subscriptions). Returns whether one existed.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let list = match group {
            Some(g) => &mut node.groups.entry(g.into()).or_default().members,
            None => &mut node.subscribers,
        };
        match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, &sub.session)) {
            Some(existing) => {
                *existing = sub;
                true
            }
            None => {
                list.push(sub);
                self.count += 1;
                false
            }
        }
    }

    /// Removes `session`'s subscription to `filter`. Returns whether it existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session: &Arc<Session>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, session);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Number of subscriptions in the index.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the trie holds no node at all (for the fuzz model check).
    #[cfg(fuzzing)]
    pub fn is_pruned_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// Appends every subscription matching `topic` to `out`; for each share
    /// group, one connected member chosen round-robin.
    #[cfg(any(test, fuzzing))]
    pub fn matches(&self, topic: &str, out: &mut Vec<Match>) {
        self.matches_scoped(topic, true, out, &mut Vec::new());
    }

    /// [`Trie::matches`], leaving out the share groups unless `groups`;
    /// the shared subscriptions of matching groups with no member
    /// connected go to `unserved` (one per group). Returns how many
    /// subscriber lists contributed to `out` (share groups' members
    /// counting one each): with at most one, no session is in `out` twice,
    /// as a list holds one subscription per session.
    pub fn matches_scoped(
        &self,
        topic: &str,
        groups: bool,
        out: &mut Vec<Match>,
        unserved: &mut Vec<Arc<TopicFilter>>,
    ) -> usize {
        let system = topic.starts_with('$');
        let mut found = Found { out, unserved, groups, lists: 0 };
        collect(&self.root, Some(topic), system, &mut found);
        found.lists
    }

    /// One connected member of share group `group` of exactly `filter`
    /// (not a match: the filter itself), chosen as [`Trie::matches`] does.
    pub fn group_member(&self, filter: &str, group: &str) -> Option<Match> {
        pick_member(self.group(filter, group)?).map(Match::from)
    }

    /// The shared subscription of share group `group` of `filter`, while
    /// the group has members.
    pub fn group_key(&self, filter: &str, group: &str) -> Option<Arc<TopicFilter>> {
        self.group(filter, group)?.members.iter().find_map(|m| m.share.clone())
    }

    /// Every connected member of share group `group` of `filter`, starting
    /// with the one whose turn it is.
    pub fn group_online(&self, filter: &str, group: &str) -> Vec<Match> {
        let Some(group) = self.group(filter, group) else { return Vec::new() };
        let n = group.members.len();
        let start = group.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &group.members[(start + i) % n]).filter(|m| m.session.lock().online).map(Match::from).collect()
    }

    /// The sessions of every member of share group `group` of `filter`.
    pub fn group_sessions(&self, filter: &str, group: &str) -> Vec<Arc<Session>> {
        self.group(filter, group).map_or_else(Vec::new, |g| g.members.iter().map(|m| m.session.clone()).collect())
    }

    fn group(&self, filter: &str, group: &str) -> Option<&ShareGroup> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.child(level)?;
        }
        node.groups.get(group)
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, session: &Arc<Session>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let Some(share) = node.groups.get_mut(g) else { return false };
                let before = share.members.len();
                share.members.retain(|s| !Arc::ptr_eq(&s.session, session));
                let removed = share.members.len() != before;
                if share.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
            None => {
                let before = node.subscribers.len();
                node.subscribers.retain(|s| !Arc::ptr_eq(&s.session, session));
                node.subscribers.len() != before
            }
        };
    };
    let Some(child) = node.child_mut(first) else { return false };
    let removed = remove_at(child, rest, group, session);
    if child.is_empty() {
        node.remove_child(first);
    }
    removed
}

/// Where [`collect`] puts what it finds.
struct Found<'a> {
    out: &'a mut Vec<Match>,
    unserved: &'a mut Vec<Arc<TopicFilter>>,
    /// Whether share groups are included at all.
    groups: bool,
    /// Subscriber lists that added to `out`.
    lists: usize,
}

/// Collects the subscriptions under `node` matching `rest`, the topic's
/// levels below it (`None` past the last one), split as the walk goes so
/// that matching allocates nothing.
fn collect(node: &Node, rest: Option<&str>, system: bool, found: &mut Found<'_>) {
    // `#` matches the parent level too ("a/#" matches "a"), and every child.
    // At the first level of a `$` topic wildcards match nothing [MQTT-4.7.2-1].
    let wildcards_allowed = !system;
    if wildcards_allowed && let Some(hash) = &node.hash {
        push_all(hash, found);
    }
    let Some(levels) = rest else {
        push_all(node, found);
        return;
    };
    // A byte scan: topics are short, and `split_once` costs a searcher.
    let (first, rest) = match levels.bytes().position(|b| b == b'/') {
        Some(at) => (&levels[..at], Some(&levels[at + 1..])),
        None => (levels, None),
    };
    if let Some(child) = node.children.get(first) {
        collect(child, rest, false, found);
    }
    if wildcards_allowed && let Some(plus) = &node.plus {
        collect(plus, rest, false, found);
    }
}

fn push_all(node: &Node, found: &mut Found<'_>) {
    if !node.subscribers.is_empty() {
        found.lists += 1;
        found.out.extend(node.subscribers.iter().map(Match::from));
    }
    if !found.groups {
        return;
    }
    for group in node.groups.values() {
        match pick_member(group) {
            Some(member) => {
                found.lists += 1;
                found.out.push(Match::from(member));
            }
            None => found.unserved.extend(group.members.iter().find_map(|m| m.share.clone())),
        }
    }
}

/// The member whose turn it is among the connected ones. A group whose
/// members are all away gets none: its messages wait in the group for
/// the next member to connect (`router::share`), rather than with a
/// member that may never come back.
fn pick_member(group: &ShareGroup) -> Option<&Subscriber> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..n).map(|i| &group.members[(start + i) % n]).find(|m| m.session.lock().online)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(session: &Arc<Session>) -> Subscriber {
        Subscriber { session: session.clone(), options: SubscriptionOptions::default(), id: None, share: None }
    }

    fn member(session: &Arc<Session>, filter: &str) -> Subscriber {
        let share = Some(Arc::new(TopicFilter::new(filter).expect("valid")));
        Subscriber { share, ..sub(session) }
    }

    fn online(id: &str) -> Arc<Session> {
        let session = Arc::new(Session::new(id.into(), crate::session::QueueBound::messages(10)));
        session.lock().online = true;
        session
    }

    fn matched(trie: &Trie, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.matches(topic, &mut out);
        let mut ids: Vec<String> = out.iter().map(|m| m.session.client_id().to_string()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn wildcards_and_parent_match() {
        let a = Arc::new(Session::new("a".into(), crate::session::QueueBound::messages(10)));
        let b = Arc::new(Session::new("b".into(), crate::session::QueueBound::messages(10)));
        let c = Arc::new(Session::new("c".into(), crate::session::QueueBound::messages(10)));
        let mut t = Trie::default();
        t.insert("s/#", None, sub(&a));
        t.insert("s/+/x", None, sub(&b));
        t.insert("#", None, sub(&c));
        assert_eq!(matched(&t, "s"), ["a", "c"]);
        assert_eq!(matched(&t, "s/1/x"), ["a", "b", "c"]);
        assert_eq!(matched(&t, "$SYS/x"), Vec::<String>::new());
        assert!(t.remove("s/#", None, &a));
        assert!(!t.remove("s/#", None, &a));
        assert_eq!(matched(&t, "s/1/x"), ["b", "c"]);
        assert_eq!(t.len(), 2);
        t.remove("s/+/x", None, &b);
        t.remove("#", None, &c);
        assert!(t.root.is_empty());
    }

    #[test]
    fn share_group_round_robin() {
        let (a, b) = (online("a"), online("b"));
        let mut t = Trie::default();
        t.insert("t", Some("g"), member(&a, "$share/g/t"));
        t.insert("t", Some("g"), member(&b, "$share/g/t"));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(matched(&t, "t"));
        }
        assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2);
        assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2);
        let mut plain = Vec::new();
        t.matches_scoped("t", false, &mut plain, &mut Vec::new());
        assert!(plain.is_empty(), "groups left out");
        let picked: Vec<_> = (0..2).filter_map(|_| t.group_member("t", "g")).collect();
        assert_ne!(picked[0].session.client_id(), picked[1].session.client_id());
        assert!(t.group_member("+", "g").is_none(), "the filter itself, not a match");
        assert!(t.group_member("t", "h").is_none());
        assert_eq!(t.group_online("t", "g").len(), 2);
    }

    #[test]
    fn a_group_with_no_member_connected_is_unserved() {
        let (a, b) = (online("a"), online("b"));
        let mut t = Trie::default();
        t.insert("t/#", Some("g"), member(&a, "$share/g/t/#"));
        t.insert("t/#", Some("g"), member(&b, "$share/g/t/#"));
        a.lock().online = false;
        for _ in 0..3 {
            assert_eq!(matched(&t, "t/1"), ["b"], "only the connected member");
        }
        b.lock().online = false;
        let (mut out, mut unserved) = (Vec::new(), Vec::new());
        t.matches_scoped("t/1", true, &mut out, &mut unserved);
        assert!(out.is_empty(), "no member away gets it");
        assert_eq!(unserved.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["$share/g/t/#"]);
        assert!(t.group_member("t/#", "g").is_none());
        assert_eq!(t.group_key("t/#", "g").as_deref().map(TopicFilter::as_str), Some("$share/g/t/#"));
        assert!(t.group_online("t/#", "g").is_empty());
    }
}
