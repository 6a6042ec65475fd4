//! Subscribe / unsubscribe / match sequences on the subscription trie,
//! checked against a naive model: a list of (session, filter, group)
//! matched with `filter_matches`. Also checks that a trie emptied of
//! subscriptions holds no nodes (no growth under churn).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use moat::codec::TopicFilter;
use moat::codec::topic::filter_matches;
use moat::fuzzing::Trie;

const SESSIONS: usize = 4;
const FILTER_LEVELS: [&str; 7] = ["a", "b", "+", "#", "$SYS", "", "c"];
const TOPIC_LEVELS: [&str; 5] = ["a", "b", "$SYS", "", "c"];
const GROUPS: [&str; 2] = ["g", "h"];

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { session: u8, filter: Vec<u8>, group: Option<u8> },
    Unsubscribe { session: u8, filter: Vec<u8>, group: Option<u8> },
    Match { topic: Vec<u8> },
}

fn join(parts: &[u8], table: &[&str]) -> String {
    let levels: Vec<&str> = parts.iter().take(6).map(|&i| table[usize::from(i) % table.len()]).collect();
    levels.join("/")
}

type Entry = (usize, String, Option<&'static str>);

fuzz_target!(|ops: Vec<Op>| {
    let mut trie = Trie::new(SESSIONS);
    let mut model: Vec<Entry> = Vec::new();
    for op in ops {
        match op {
            Op::Subscribe { session, filter, group } => {
                let Some(entry) = entry(session, &filter, group) else { continue };
                let existed = model.contains(&entry);
                assert_eq!(trie.insert(&entry.1, entry.2, entry.0), existed, "insert {entry:?}");
                if !existed {
                    model.push(entry);
                }
            }
            Op::Unsubscribe { session, filter, group } => {
                let Some(entry) = entry(session, &filter, group) else { continue };
                let existed = model.contains(&entry);
                assert_eq!(trie.remove(&entry.1, entry.2, entry.0), existed, "remove {entry:?}");
                model.retain(|e| *e != entry);
            }
            Op::Match { topic } => check_match(&trie, &model, &join(&topic, &TOPIC_LEVELS)),
        }
        assert_eq!(trie.len(), model.len());
        assert_eq!(trie.is_empty(), model.is_empty(), "empty trie keeps nodes, or the reverse");
    }
});

fn entry(session: u8, filter: &[u8], group: Option<u8>) -> Option<Entry> {
    let filter = join(filter, &FILTER_LEVELS);
    TopicFilter::new(&filter).ok().filter(|f| f.share_group().is_none())?;
    let group = group.map(|g| GROUPS[usize::from(g) % GROUPS.len()]);
    Some((usize::from(session) % SESSIONS, filter, group))
}

fn check_match(trie: &Trie, model: &[Entry], topic: &str) {
    let mut got = trie.matches(topic);
    let matching: Vec<&Entry> = model.iter().filter(|e| filter_matches(&e.1, topic)).collect();
    // Every plain subscription matches once.
    for e in matching.iter().filter(|e| e.2.is_none()) {
        let at = got.iter().position(|&s| s == e.0);
        let at = at.unwrap_or_else(|| panic!("{topic:?}: missing {e:?}; got {got:?}"));
        got.swap_remove(at);
    }
    // Each matching share group delivers to exactly one of its members.
    let mut groups: Vec<(&str, &str)> = matching.iter().filter_map(|e| Some((e.1.as_str(), e.2?))).collect();
    groups.sort_unstable();
    groups.dedup();
    assert_eq!(got.len(), groups.len(), "{topic:?}: share group matches {got:?} for {groups:?}");
    for s in got {
        assert!(matching.iter().any(|e| e.0 == s && e.2.is_some()), "{topic:?}: {s} is in no matching group");
    }
}
