//! Recording file names (INTERFACES.md, `--record`): `<peer id>-<track id>.ivf|.ogg`, the track id
//! reduced to `[A-Za-z0-9_.-]` (the kind if nothing is left); an existing name gets `-2`, `-3`,
//! ..., never overwritten. The names come from the remote, so nothing of them is trusted.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Longest part taken from a remote-made id, so the name stays well under 255 bytes.
const MAX_PART: usize = 100;
/// Suffixes tried before giving up.
const MAX_SUFFIX: u32 = 10_000;

/// `text` reduced to `[A-Za-z0-9_.-]`, at most [`MAX_PART`] characters; `fallback` if empty.
pub fn reduce(text: &str, fallback: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(MAX_PART)
        .collect();
    if kept.is_empty() { fallback.to_string() } else { kept }
}

/// The base name (before any suffix) for a track.
pub fn base_name(peer: &str, track_id: &str, kind: &str) -> String {
    format!("{}-{}", reduce(peer, "peer"), reduce(track_id, kind))
}

/// Creates a new file in `dir` for the track: `<base>.<ext>`, else `<base>-2.<ext>`, ...
/// Never opens an existing file (`create_new`), so a name taken meanwhile is skipped too.
pub fn create(dir: &Path, base: &str, ext: &str) -> io::Result<(PathBuf, File)> {
    for n in 1..=MAX_SUFFIX {
        let name = if n == 1 { format!("{base}.{ext}") } else { format!("{base}-{n}.{ext}") };
        let path = dir.join(name);
        match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("{MAX_SUFFIX} files named {base}.{ext} already exist")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_ids_are_reduced_to_safe_characters() {
        assert_eq!(base_name("p1", "{3f2a-b}", "video"), "p1-3f2a-b");
        assert_eq!(base_name("p1", "../../etc/passwd", "video"), "p1-....etcpasswd");
        assert_eq!(base_name("p1", "/// ", "audio"), "p1-audio");
        assert_eq!(base_name("", "ü", "video"), "peer-video");
        assert_eq!(reduce(&"x".repeat(500), "k").len(), MAX_PART);
    }

    #[test]
    fn an_existing_name_gets_a_suffix_and_is_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("naming-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("a-v.ivf"), b"keep").expect("seed");
        let (second, _) = create(&dir, "a-v", "ivf").expect("second");
        let (third, _) = create(&dir, "a-v", "ivf").expect("third");
        let kept = std::fs::read(dir.join("a-v.ivf")).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(second.file_name().and_then(|n| n.to_str()), Some("a-v-2.ivf"));
        assert_eq!(third.file_name().and_then(|n| n.to_str()), Some("a-v-3.ivf"));
        assert_eq!(kept, b"keep");
    }
}
