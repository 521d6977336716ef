//! What a sender calls its file, made a safe name inside the receive directory.

/// Longest stored name in bytes, below the usual 255-byte file-name limit, with room for a
/// " (123)" suffix.
pub(crate) const MAX_NAME_BYTES: usize = 200;
/// Name used when nothing is left of the sender's claim.
const FALLBACK_NAME: &str = "file";

/// Turns a sender's claimed name into a plain file name that is safe to create inside the
/// receive directory: only the last path component (`/` or `\` separated), no control
/// characters (NUL included), no leading dot (no hidden files, no `.` or `..`), at most
/// [`MAX_NAME_BYTES`] bytes; [`FALLBACK_NAME`] when nothing is left.
pub fn sanitize_name(claim: &str) -> String {
    let last = claim.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut name = String::with_capacity(trimmed.len().min(MAX_NAME_BYTES));
    for c in trimmed.chars() {
        if name.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    let name = name.trim_end().to_string();
    if name.is_empty() { FALLBACK_NAME.to_string() } else { name }
}

/// `name`, then `stem (1).ext`, `stem (2).ext`, ... for the n-th try.
pub(crate) fn candidate_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}
