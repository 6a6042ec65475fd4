//! The log filter the broker installs for `[log] level` or `RUST_LOG`.
//!
//! Compiling one plugin at `debug` makes Cranelift and wasmtime write tens
//! of thousands of lines (98,669 for one `moat plugin check`), which bury
//! the broker's own. An operator who asks for `debug` wants Moat's debug
//! lines, so those targets stay at `warn` unless the filter names them.

/// Targets kept at `warn` when the filter's default level is more verbose
/// and the filter does not name them. A directive matches every target
/// that starts with its own, so `wasmtime` covers `wasmtime_environ` and
/// `wasmtime_internal_cranelift`, and `cranelift` covers `cranelift_codegen`.
pub const QUIET_TARGETS: &[&str] = &["cranelift", "wasmtime", "regalloc2"];

/// `filter` (a `tracing` filter: `debug`, `info,moat::reload=debug`...)
/// with `TARGET=warn` added for each of [`QUIET_TARGETS`] it does not
/// name, when its default level is `info`, `debug` or `trace`. A directive
/// for a longer target (`cranelift_codegen=trace`) is more specific than
/// the added one and still applies; a default of `warn` or quieter, or no
/// default at all (`moat=debug`), is left as it is.
pub fn log_filter(filter: &str) -> String {
    let directives: Vec<&str> = filter.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let verbose_default = directives.iter().any(|d| matches!(default_level(d), Some(Level::Verbose)));
    if !verbose_default {
        return filter.to_owned();
    }
    let named = |target: &str| directives.iter().any(|d| directive_target(d) == Some(target));
    let mut out = filter.trim().trim_end_matches(',').to_owned();
    for target in QUIET_TARGETS.iter().filter(|t| !named(t)) {
        out.push(',');
        out.push_str(target);
        out.push_str("=warn");
    }
    out
}

/// How a target-less directive sets the default level.
enum Level {
    /// `info`, `debug` or `trace`: more than warnings.
    Verbose,
    /// `warn`, `error` or `off`.
    Quiet,
}

/// The default level a directive sets, if it is a bare level.
fn default_level(directive: &str) -> Option<Level> {
    match directive.to_ascii_lowercase().as_str() {
        "info" | "debug" | "trace" | "3" | "4" | "5" => Some(Level::Verbose),
        "warn" | "error" | "off" | "1" | "2" => Some(Level::Quiet),
        _ => None,
    }
}

/// The target a directive names (`wasmtime` in `wasmtime=debug`,
/// `cranelift_codegen[span]=trace` names `cranelift_codegen`); `None` for
/// a bare level or a span-only directive.
fn directive_target(directive: &str) -> Option<&str> {
    if default_level(directive).is_some() {
        return None;
    }
    let end = directive.find(['=', '[']).unwrap_or(directive.len());
    let target = directive[..end].trim();
    (!target.is_empty()).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_verbose_default_keeps_the_compiler_at_warn() {
        assert_eq!(log_filter("debug"), "debug,cranelift=warn,wasmtime=warn,regalloc2=warn");
        assert_eq!(log_filter("INFO"), "INFO,cranelift=warn,wasmtime=warn,regalloc2=warn");
        assert_eq!(
            log_filter("trace,moat::reload=debug,"),
            "trace,moat::reload=debug,cranelift=warn,wasmtime=warn,regalloc2=warn"
        );
    }

    #[test]
    fn named_targets_are_the_users_choice() {
        assert_eq!(log_filter("debug,wasmtime=debug"), "debug,wasmtime=debug,cranelift=warn,regalloc2=warn");
        assert_eq!(
            log_filter("debug,cranelift[compile]=trace"),
            "debug,cranelift[compile]=trace,wasmtime=warn,regalloc2=warn"
        );
        // A longer target is more specific than the added directive.
        assert_eq!(
            log_filter("debug,cranelift_codegen=trace"),
            "debug,cranelift_codegen=trace,cranelift=warn,wasmtime=warn,regalloc2=warn"
        );
    }

    #[test]
    fn quiet_or_absent_defaults_are_left_alone() {
        for filter in ["warn", "error", "off", "moat=debug", "moat=trace,wasmtime=info", ""] {
            assert_eq!(log_filter(filter), filter);
        }
    }

    #[test]
    fn the_result_is_a_valid_filter() {
        for filter in ["debug", "debug,wasmtime=debug", "info,moat=trace"] {
            let out = log_filter(filter);
            assert!(tracing_subscriber::EnvFilter::try_new(&out).is_ok(), "{out}");
        }
    }
}
