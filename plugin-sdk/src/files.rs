//! Reading the files a plugin was granted, with errors an operator reads
//! as the host's.

/// Reads the file at `path` (absolute, inside a directory of the plugin's
/// `grants.read`) as UTF-8 text, for `init`.
///
/// The error names the file and says what went wrong in the host's words
/// (`No such file or directory`), without WASI's error number, which
/// differs from the host's (`os error 44` is the host's `2`). A missing
/// file and a directory that was not granted look the same from inside the
/// sandbox, so that error says both.
///
/// ```
/// let err = moat_plugin_sdk::read_file("/no/such/file").unwrap_err();
/// assert!(err.starts_with("cannot read /no/such/file: No such file or directory"), "{err}");
/// assert!(!err.contains("os error"), "{err}");
/// ```
///
/// # Errors
/// `cannot read PATH: WHY`, for the plugin's `init` error.
pub fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        let why = describe(&e);
        match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("cannot read {path}: {why} (or its directory is not in the plugin's `grants.read`)")
            }
            _ => format!("cannot read {path}: {why}"),
        }
    })
}

/// The error's text without ` (os error N)`: the number is WASI's errno
/// inside a plugin, which means something else on the host.
pub fn describe(error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::InvalidData {
        return "not valid UTF-8 text".to_owned();
    }
    let text = error.to_string();
    match text.rsplit_once(" (os error ") {
        Some((description, _)) => description.to_owned(),
        None => text,
    }
}
