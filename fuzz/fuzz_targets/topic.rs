//! Topic names and filters: parsing never panics, and parsing and
//! matching agree with each other on simple invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat::codec::topic::filter_matches;
use moat::codec::{TopicFilter, TopicName};

fuzz_target!(|input: (&str, &str, &str)| {
    let (a, b, group) = input;
    check_name(a);
    check_filter(a);
    // Any pair, valid or not, must not panic.
    let _ = filter_matches(a, b);
    if let (Ok(filter), Ok(name)) = (TopicFilter::new(a), TopicName::new(b)) {
        check_match(&filter, &name);
    }
    check_share(group, a);
});

fn check_name(s: &str) {
    let Ok(name) = TopicName::new(s) else { return };
    assert!(!s.contains(['+', '#', '\0']) && s.len() <= 65535, "{s:?} accepted as a topic name");
    assert_eq!(name.as_str(), s);
    assert_eq!(name.levels().count(), s.split('/').count());
    if s.is_empty() {
        return;
    }
    // A valid non-empty name is a valid filter matching itself (unless it
    // reads as a shared subscription).
    if !s.starts_with("$share/") {
        let filter = TopicFilter::new(s).unwrap_or_else(|e| panic!("name {s:?} is no filter: {e:?}"));
        assert!(filter.matches(&name), "{s:?} does not match itself");
        assert!(!filter.has_wildcards());
    }
    // Every level replaced by `+`, and `#`, match it unless it is a `$` topic.
    let plus = vec!["+"; s.split('/').count()].join("/");
    let system = s.starts_with('$');
    assert_eq!(filter_matches(&plus, s), !system, "{plus:?} vs {s:?}");
    assert_eq!(filter_matches("#", s), !system, "# vs {s:?}");
    // A `$` topic is matched by its own first level followed by `#`.
    let first = s.split('/').next().unwrap_or_default();
    assert!(filter_matches(&format!("{first}/#"), s), "{first}/# vs {s:?}");
}

fn check_filter(s: &str) {
    let Ok(filter) = TopicFilter::new(s) else { return };
    assert!(!s.is_empty() && !s.contains('\0') && s.len() <= 65535, "{s:?} accepted as a filter");
    assert_eq!(filter.as_str(), s);
    let inner = filter.filter();
    assert!(!inner.is_empty());
    assert!(s.ends_with(inner));
    for (i, level) in inner.split('/').enumerate() {
        let last = i + 1 == inner.split('/').count();
        assert!(level == "+" || (level == "#" && last) || !level.contains(['+', '#']), "bad level {level:?} in {s:?}");
    }
}

fn check_match(filter: &TopicFilter, name: &TopicName) {
    let (f, t) = (filter.filter(), name.as_str());
    let matched = filter.matches(name);
    assert_eq!(matched, filter_matches(f, t));
    if !matched {
        return;
    }
    let (f_levels, t_levels) = (f.split('/').count(), t.split('/').count());
    if f.ends_with('#') {
        // "a/#" also matches "a": one level fewer than the filter.
        assert!(t_levels + 1 >= f_levels, "{f:?} matched {t:?}");
    } else {
        assert_eq!(f_levels, t_levels, "{f:?} matched {t:?}");
    }
    for (fl, tl) in f.split('/').zip(t.split('/')) {
        assert!(fl == "+" || fl == "#" || fl == tl, "{f:?} matched {t:?}");
    }
    if t.starts_with('$') {
        assert!(!f.starts_with(['+', '#']), "{f:?} matched system topic {t:?}");
    }
}

fn check_share(group: &str, inner: &str) {
    let full = format!("$share/{group}/{inner}");
    let shared = TopicFilter::new(&full);
    if group.contains('/') {
        // Then the group and filter split elsewhere; only no panic counts.
        return;
    }
    let group_ok = !group.is_empty() && !group.contains(['+', '#', '\0']);
    let inner_ok = TopicFilter::new(inner).is_ok_and(|f| f.share_group().is_none());
    if group_ok && inner_ok && full.len() <= 65535 {
        let shared = shared.unwrap_or_else(|e| panic!("{full:?} refused: {e:?}"));
        assert_eq!(shared.share_group(), Some(group));
        assert_eq!(shared.filter(), inner);
    } else if !group_ok || inner.is_empty() {
        assert!(shared.is_err(), "{full:?} accepted");
    }
}
