use super::*;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-tb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn all(dir: &Path) -> Vec<EventFile> {
    event_files(dir)
        .unwrap()
        .iter()
        .map(|p| read(p).unwrap())
        .collect()
}

#[test]
fn scalars_and_texts_read_back() {
    let dir = temp("rw");
    let mut log = EventLog::create(&dir, 0).unwrap();
    let name = log
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    log.text(0, "recipe", &code_block("yaml", "a: 1\n"))
        .unwrap();
    log.scalars(1, &[("train/loss".into(), 2.5), ("train/lr".into(), 0.0)])
        .unwrap();
    log.scalars(2, &[("train/loss".into(), 1.25)]).unwrap();
    let files = all(&dir);
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(f.damage, None);
    assert_eq!(
        f.events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    assert_eq!(f.scalars("train/loss"), [(1, 2.5), (2, 1.25)]);
    // A zero is written (a oneof keeps it), not left out as protobuf's default.
    assert_eq!(f.scalars("train/lr"), [(1, 0.0)]);
    assert_eq!(f.texts("recipe"), [(0, "```yaml\na: 1\n```".to_string())]);
    assert!(f.events.iter().all(|e| e.wall_time > 1.0e9));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_cuts_the_older_files_back_and_marks_its_start() {
    let dir = temp("resume");
    let mut log = EventLog::create(&dir, 0).unwrap();
    log.text(0, "recipe", "r").unwrap();
    for s in 1..=5 {
        log.scalars(s, &[("train/loss".into(), s as f64)]).unwrap();
    }
    log.scalars(4, &[("metrics/x".into(), 0.5)]).unwrap();
    let first = log.path().to_path_buf();
    drop(log);
    // A torn last record (the process was killed while writing it).
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend_from_slice(&record::frame(b"cut")[..9]);
    std::fs::write(&first, &bytes).unwrap();
    // Resumed from the checkpoint of step 3.
    let mut log = EventLog::create(&dir, 3).unwrap();
    assert_ne!(log.path(), first);
    log.text(0, "recipe", "r").unwrap();
    log.scalars(3, &[("metrics/x".into(), 0.25)]).unwrap();
    log.scalars(4, &[("train/loss".into(), 40.0)]).unwrap();
    let files = all(&dir);
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].path, first, "the older file sorts first");
    assert_eq!(files[0].damage, None, "the torn record is removed");
    assert_eq!(
        files[0].scalars("train/loss"),
        [(1, 1.0), (2, 2.0), (3, 3.0)]
    );
    assert!(files[0].scalars("metrics/x").is_empty());
    let new = &files[1];
    assert_eq!(new.events[1].step, 4);
    assert_eq!(
        new.events[1].what,
        Some(What::SessionLog(proto::SessionLog {
            status: proto::SESSION_START
        }))
    );
    // Not written twice: the text the older file holds. Written: a tag it does not hold at
    // that step, and the steps after the checkpoint.
    assert!(new.texts("recipe").is_empty());
    assert_eq!(new.scalars("metrics/x"), [(3, 0.25)]);
    assert_eq!(new.scalars("train/loss"), [(4, 40.0)]);
    // Steps the older files hold are not written again.
    let mut log = EventLog::create(&dir, 4).unwrap();
    log.scalars(4, &[("train/loss".into(), 9.0), ("val/loss".into(), 1.0)])
        .unwrap();
    let last = read(log.path()).unwrap();
    assert!(last.scalars("train/loss").is_empty());
    assert_eq!(last.scalars("val/loss"), [(4, 1.0)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn foreign_and_damaged_files_are_typed_errors() {
    let dir = temp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    // CRCs that match around bytes that are no protobuf Event.
    let path = dir.join("events.out.tfevents.1.x");
    std::fs::write(&path, record::frame(&[0xff, 0xff, 0xff])).unwrap();
    assert!(matches!(read(&path), Err(Error::Decode { index: 0, .. })));
    let e = EventLog::create(&dir, 0).unwrap_err();
    assert!(e.to_string().contains("is not a TensorBoard event"), "{e}");
    // A directory named like an event file is not read as one; hidden ones are not kiln's.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(dir.join("x.tfevents.d")).unwrap();
    std::fs::write(dir.join(".events.out.tfevents.1.x.tmp1"), b"junk").unwrap();
    assert!(event_files(&dir).unwrap().is_empty());
    assert!(event_files(&dir.join("absent")).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reports_flatten_to_tags() {
    let mut out = Vec::new();
    flatten(
        "metrics",
        &serde_json::json!({
            "task": "uint16", "loss": 1.5, "undefined": null, "ok": true,
            "top": [{"k": 1, "model": 0.5, "ci95": [0.4, 0.6]}],
            "plain": [3, 4]
        }),
        &mut out,
    );
    let tags: Vec<(&str, f64)> = out.iter().map(|(t, v)| (t.as_str(), *v)).collect();
    assert_eq!(
        tags,
        [
            ("metrics/loss", 1.5),
            ("metrics/top-1/k", 1.0),
            ("metrics/top-1/model", 0.5),
            ("metrics/top-1/ci95/0", 0.4),
            ("metrics/top-1/ci95/1", 0.6),
            ("metrics/plain/0", 3.0),
            ("metrics/plain/1", 4.0),
        ]
    );
    assert_eq!(code_block("text", "a ``` b\n"), "````text\na ``` b\n````");
}
