use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{FileHeader, MAX_FILE_CHUNK_BYTES, PeerId};
use sha2::{Digest, Sha256};

use super::names::{MAX_NAME_BYTES, candidate_name};
use super::*;

const CHUNK_BYTES: usize = MAX_FILE_CHUNK_BYTES;

/// A fresh directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("switchboard-files-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Every entry of the directory, sorted, hidden ones included.
    fn entries(&self) -> Vec<String> {
        list(&self.0)
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn header(name: &str, data: &[u8]) -> Vec<u8> {
    FileHeader { name: name.into(), size: data.len() as u64, sha256: sha(data) }.to_json().into_bytes()
}

/// Feeds a whole transfer (header, then chunks) and returns the last step or the error.
fn transfer(dir: &Path, name: &str, data: &[u8]) -> Result<Step, FileError> {
    let mut incoming = Incoming::new(dir);
    let mut step = incoming.on_message(true, &header(name, data))?;
    for chunk in data.chunks(CHUNK_BYTES) {
        step = incoming.on_message(false, chunk)?;
    }
    Ok(step)
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

#[test]
fn hostile_names_keep_only_a_safe_last_component() {
    let cases = [
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("C:\\Users\\x\\photo.jpg", "photo.jpg"),
        ("", "file"),
        (".", "file"),
        ("..", "file"),
        ("dir/", "file"),
        ("a/b/..", "file"),
        ("evil\0name.txt", "evilname.txt"),
        ("\0", "file"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        (".bashrc", "bashrc"),
        ("...", "file"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("photo.jpg", "photo.jpg"),
        ("ünïcødé 📷.png", "ünïcødé 📷.png"),
    ];
    for (claim, expected) in cases {
        assert_eq!(sanitize_name(claim), expected, "claim {claim:?}");
    }
}

#[test]
fn long_names_are_cut_on_a_character_boundary() {
    let name = sanitize_name(&"é".repeat(300));
    assert!(name.len() <= MAX_NAME_BYTES, "{} bytes", name.len());
    assert!(name.chars().all(|c| c == 'é'));
}

#[test]
fn a_sanitized_name_never_leaves_the_directory() {
    let dir = Path::new("/srv/received");
    for claim in ["../x", "../../../../etc/shadow", "/abs", "a/../../b", "..", ".", "", "\\..\\..", "x/\0/.."]
    {
        let joined = dir.join(sanitize_name(claim));
        assert_eq!(joined.parent(), Some(dir), "claim {claim:?} gave {}", joined.display());
    }
}

#[test]
fn files_of_every_size_arrive_intact() {
    let scratch = Scratch::new();
    for (i, size) in [0usize, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 5 * CHUNK_BYTES + 7]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size);
        let name = format!("f{i}.bin");
        let step = transfer(scratch.path(), &name, &data).unwrap_or_else(|e| panic!("size {size}: {e}"));
        let Step::Done(received) = step else { panic!("size {size}: not done: {step:?}") };
        assert_eq!(received.size, size as u64);
        assert_eq!(received.sha256, sha(&data));
        assert_eq!(received.path, scratch.path().join(&name));
        assert_eq!(std::fs::read(&received.path).ok(), Some(data), "size {size}: stored bytes differ");
    }
    let expected: Vec<String> = (0..6).map(|i| format!("f{i}.bin")).collect();
    assert_eq!(scratch.entries(), expected, "no temporary file is left");
}

#[test]
fn a_name_clash_gets_a_suffix_and_never_overwrites() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("photo.jpg"), b"mine").unwrap_or_default();
    std::fs::write(scratch.path().join("README"), b"mine").unwrap_or_default();
    let mut paths = Vec::new();
    for (name, data) in [("photo.jpg", &b"one"[..]), ("photo.jpg", b"two"), ("README", b"three")] {
        match transfer(scratch.path(), name, data) {
            Ok(Step::Done(r)) => paths.push(r.path),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        paths,
        vec![
            scratch.path().join("photo (1).jpg"),
            scratch.path().join("photo (2).jpg"),
            scratch.path().join("README (1)")
        ]
    );
    assert_eq!(
        std::fs::read(scratch.path().join("photo.jpg")).ok(),
        Some(b"mine".to_vec()),
        "the old file is untouched"
    );
    assert_eq!(std::fs::read(scratch.path().join("photo (2).jpg")).ok(), Some(b"two".to_vec()));
}

#[test]
fn a_planted_symlink_is_not_followed() {
    let scratch = Scratch::new();
    let outside = Scratch::new();
    let target = outside.path().join("target");
    std::fs::write(&target, b"precious").unwrap_or_default();
    if std::os::unix::fs::symlink(&target, scratch.path().join("x.txt")).is_err() {
        panic!("cannot create a symlink in {}", scratch.path().display());
    }
    let step = transfer(scratch.path(), "x.txt", b"attack");
    assert!(matches!(&step, Ok(Step::Done(r)) if r.path == scratch.path().join("x (1).txt")), "{step:?}");
    assert_eq!(std::fs::read(&target).ok(), Some(b"precious".to_vec()));
}

#[test]
fn hostile_names_are_stored_inside_the_directory() {
    let parent = Scratch::new();
    let dir = parent.path().join("inbox");
    for claim in ["../../etc/passwd", "/etc/passwd", "", "\0", "..", ".", "../escape"] {
        match transfer(&dir, claim, b"x") {
            Ok(Step::Done(r)) => assert_eq!(r.path.parent(), Some(dir.as_path()), "claim {claim:?}"),
            other => panic!("claim {claim:?}: {other:?}"),
        }
    }
    assert_eq!(parent.entries(), vec!["inbox".to_string()], "nothing was written next to the receive dir");
    assert_eq!(
        list(&dir),
        vec!["escape", "file", "file (1)", "file (2)", "file (3)", "passwd", "passwd (1)"]
    );
}

#[test]
fn a_hash_mismatch_fails_and_leaves_nothing() {
    let scratch = Scratch::new();
    let mut incoming = Incoming::new(scratch.path());
    let lie = FileHeader { name: "a.bin".into(), size: 3, sha256: sha(b"xyz") }.to_json();
    assert!(incoming.on_message(true, lie.as_bytes()).is_ok());
    assert_eq!(scratch.entries().len(), 1, "a temporary file while receiving");
    let result = incoming.on_message(false, b"abc");
    assert!(matches!(result, Err(FileError::HashMismatch { .. })), "{result:?}");
    assert!(scratch.entries().is_empty(), "left {:?}", scratch.entries());
    assert!(incoming.on_close().is_none(), "a failure is reported once");
}

#[test]
fn an_early_close_fails_and_leaves_nothing() {
    let scratch = Scratch::new();
    let data = random_bytes(3 * CHUNK_BYTES);
    let mut incoming = Incoming::new(scratch.path());
    assert!(incoming.on_message(true, &header("big.bin", &data)).is_ok());
    assert!(incoming.on_message(false, &data[..CHUNK_BYTES]).is_ok());
    let error = incoming.on_close();
    assert!(
        matches!(error, Some(FileError::ClosedEarly { received, expected }) if received == CHUNK_BYTES as u64 && expected == data.len() as u64),
        "{error:?}"
    );
    assert!(scratch.entries().is_empty(), "left {:?}", scratch.entries());
}

#[test]
fn dropping_a_transfer_midway_leaves_nothing() {
    let scratch = Scratch::new();
    let mut incoming = Incoming::new(scratch.path());
    assert!(incoming.on_message(true, &header("a.bin", b"abcdef")).is_ok());
    assert!(incoming.on_message(false, b"abc").is_ok());
    drop(incoming);
    assert!(scratch.entries().is_empty(), "left {:?}", scratch.entries());
}

#[test]
fn too_many_bytes_text_midway_or_a_binary_header_fail() {
    let scratch = Scratch::new();
    let mut incoming = Incoming::new(scratch.path());
    assert!(incoming.on_message(true, &header("a.bin", b"abc")).is_ok());
    assert!(matches!(incoming.on_message(false, b"abcd"), Err(FileError::TooManyBytes { expected: 3 })));

    let mut incoming = Incoming::new(scratch.path());
    assert!(incoming.on_message(true, &header("a.bin", b"abc")).is_ok());
    assert!(matches!(incoming.on_message(true, b"{}"), Err(FileError::UnexpectedText)));

    let mut incoming = Incoming::new(scratch.path());
    assert!(matches!(incoming.on_message(false, b"abc"), Err(FileError::BadHeader(_))));
    assert!(matches!(Incoming::new(scratch.path()).on_close(), Some(FileError::ClosedBeforeHeader)));
    assert!(scratch.entries().is_empty(), "left {:?}", scratch.entries());
}

#[test]
fn the_receive_dir_is_created_when_missing() {
    let scratch = Scratch::new();
    let dir = scratch.path().join("a").join("b");
    assert!(matches!(transfer(&dir, "x", b"1"), Ok(Step::Done(_))));
    assert_eq!(list(&dir), vec!["x".to_string()]);
}

#[test]
fn outgoing_files_are_hashed_and_named() {
    let scratch = Scratch::new();
    let path = scratch.path().join("report.pdf");
    let data = random_bytes(70_000);
    std::fs::write(&path, &data).unwrap_or_default();
    let outgoing = Outgoing::prepare(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outgoing.header, FileHeader { name: "report.pdf".into(), size: 70_000, sha256: sha(&data) });
    assert!(Outgoing::prepare(&scratch.path().join("missing")).is_err());
}

#[test]
fn suffixes_go_before_the_extension() {
    assert_eq!(candidate_name("a.tar.gz", 2), "a.tar (2).gz");
    assert_eq!(candidate_name("noext", 1), "noext (1)");
    assert_eq!(candidate_name("a.txt", 0), "a.txt");
}

#[test]
fn json_events_have_the_interface_shapes() {
    let file =
        Received { name: "a.txt".into(), size: 3, sha256: "ab".repeat(32), path: PathBuf::from("/r/a.txt") };
    let received =
        FileEvent::Received { peer: PeerId::from("p1"), transfer: 1, file, elapsed: Duration::from_secs(1) };
    assert_eq!(
        json_event(&received),
        Some(
            serde_json::json!({"event":"file_received","from":"p1","name":"a.txt","size":3,"sha256":"ab".repeat(32),"path":"/r/a.txt"})
        )
    );
    let sent = FileEvent::Sent {
        peer: PeerId::from("p2"),
        transfer: 2,
        name: "b".into(),
        size: 9,
        error: None,
        elapsed: Duration::ZERO,
    };
    assert_eq!(
        json_event(&sent),
        Some(serde_json::json!({"event":"file_sent","to":"p2","name":"b","size":9,"ok":true}))
    );
    let refused = FileEvent::Sent {
        peer: PeerId::from("p2"),
        transfer: 3,
        name: "b".into(),
        size: 9,
        error: Some("no".into()),
        elapsed: Duration::ZERO,
    };
    assert_eq!(
        json_event(&refused),
        Some(serde_json::json!({"event":"file_sent","to":"p2","name":"b","size":9,"ok":false,"error":"no"}))
    );
    let failed =
        FileEvent::Failed { peer: PeerId::from("p3"), transfer: 4, name: "c".into(), error: "bad".into() };
    assert_eq!(
        json_event(&failed),
        Some(serde_json::json!({"event":"file_failed","from":"p3","name":"c","error":"bad"}))
    );
    assert_eq!(
        json_event(&FileEvent::Progress { transfer: 1, bytes: 5 }),
        None,
        "progress is not a JSON event"
    );
}

#[test]
fn human_lines_show_the_rate() {
    let sent = FileEvent::Sent {
        peer: PeerId::from("p2"),
        transfer: 2,
        name: "b.bin".into(),
        size: 10 * 1024 * 1024,
        error: None,
        elapsed: Duration::from_secs(2),
    };
    let line = human_line(&sent, "bob (p2)", None).unwrap_or_default();
    assert_eq!(line, "* sent b.bin (10.00 MiB) to bob (p2) in 2.0 s, 5.00 MiB/s; verified by the receiver");
}

#[test]
fn a_header_over_the_size_limit_is_refused_before_anything_is_written() {
    let dir = Scratch::new();
    let inbox = dir.path().join("inbox");
    let data = random_bytes(1000);
    let mut incoming = Incoming::new(&inbox).with_max_size(999);
    let error = incoming.on_message(true, &header("big.bin", &data)).err();
    assert!(matches!(error, Some(FileError::TooLarge { size: 1000, max: 999 })), "{error:?}");
    assert!(incoming.is_finished());
    assert!(!inbox.exists(), "not even the receive dir was created");
    let mut incoming = Incoming::new(&inbox).with_max_size(1000);
    incoming.on_message(true, &header("fits.bin", &data)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_header_over_the_free_space_is_refused_and_leaves_nothing() {
    let dir = Scratch::new();
    let huge = FileHeader { name: "huge.bin".into(), size: u64::MAX / 2, sha256: sha(b"") }.to_json();
    let mut incoming = Incoming::new(dir.path());
    let error = incoming.on_message(true, huge.as_bytes()).err();
    assert!(matches!(error, Some(FileError::NoSpace { .. })), "{error:?}");
    assert_eq!(dir.entries(), Vec::<String>::new());
}

#[test]
fn an_abandoned_transfer_leaves_nothing() {
    let dir = Scratch::new();
    let data = random_bytes(3 * CHUNK_BYTES);
    let mut incoming = Incoming::new(dir.path());
    incoming.on_message(true, &header("stalled.bin", &data)).unwrap_or_else(|e| panic!("{e}"));
    incoming.on_message(false, &data[..CHUNK_BYTES]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dir.entries().len(), 1, "the temporary file while receiving");
    incoming.abandon();
    assert!(incoming.is_finished());
    assert_eq!(dir.entries(), Vec::<String>::new());
    assert!(incoming.on_close().is_none(), "abandoned is finished: no second failure");
}

#[test]
fn sizes_take_binary_suffixes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512K"), Ok(512 << 10));
    assert_eq!(parse_size("100m"), Ok(100 << 20));
    assert_eq!(parse_size("4G"), Ok(4 << 30));
    assert_eq!(DEFAULT_MAX_FILE_SIZE, 4 << 30);
    for bad in ["", "G", "1.5G", "-1", "4T", "99999999999999999999G"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}
