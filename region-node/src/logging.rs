//! The tracing filter the binary installs: `RUST_LOG`, or `log.level`, with the
//! WebSocket library capped.
//!
//! At `trace`, tungstenite logs the text of every frame it reads, which can be an
//! in-band AUTH token or a key put where it does not belong; `redact` cannot reach
//! inside a dependency's log lines. So those targets are held at `info` unless the
//! filter names them itself (an operator debugging the library asked for it).

/// Targets that log frame contents below `info`.
const FRAME_LOGGING_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// `spec` plus an `info` cap for each frame-logging target it does not name.
pub fn filter_directives(spec: &str) -> String {
    let named = |target: &str| {
        spec.split(',')
            .map(|directive| directive.trim().split(['=', '[']).next().unwrap_or(""))
            .any(|named| named == target || named.starts_with(&format!("{target}::")))
    };
    let mut directives = spec.trim().trim_end_matches(',').to_owned();
    for target in FRAME_LOGGING_TARGETS.iter().filter(|t| !named(t)) {
        if !directives.is_empty() {
            directives.push(',');
        }
        directives.push_str(target);
        directives.push_str("=info");
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_logging_targets_are_capped_unless_named() {
        assert_eq!(
            filter_directives("trace"),
            "trace,tungstenite=info,tokio_tungstenite=info"
        );
        assert_eq!(
            filter_directives(""),
            "tungstenite=info,tokio_tungstenite=info"
        );
        assert_eq!(
            filter_directives("debug,tungstenite=trace"),
            "debug,tungstenite=trace,tokio_tungstenite=info"
        );
        assert_eq!(
            filter_directives("tokio_tungstenite::compat=debug,info"),
            "tokio_tungstenite::compat=debug,info,tungstenite=info"
        );
    }

    #[test]
    fn the_capped_filter_parses_and_holds_tungstenite_at_info() {
        use tracing::level_filters::LevelFilter;
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::builder()
            .parse(filter_directives("trace"))
            .expect("a valid filter");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::TRACE));
        assert!(filter.to_string().contains("tungstenite=info"));
    }
}
