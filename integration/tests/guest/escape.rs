//! The escape corpus as real guests (issue 17): under each symlink policy, a guest behind
//! `sm run --mount` tries the known ways out of a virtio-fs share (absolute and `..` link
//! targets mid-path, hard links to files outside, a rename race that swaps a directory for a
//! link out while another loop walks through it, `/proc/self` as the backend would see it,
//! device nodes) and the host checks that nothing outside the share changed. Under `deny`
//! and `opaque` nothing outside is read either; `follow` shows host symlinks' targets by
//! design (trusted single tenant), read-only.

use crate::common::*;
use crate::run::{assert_nothing_left, run_sm, sm};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the guest must never see unless the policy shows host links' targets.
const SECRET: &str = "OUTSIDE-SECRET";

/// Every entry under `dir`: its kind, mode, link count and (for files) contents.
fn tree(dir: &Path) -> BTreeMap<String, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            let data = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            if m.is_dir() {
                todo.push(e.path());
            }
            let name = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.insert(name, (m.mode(), m.nlink(), data));
        }
    }
    out
}

/// The tricks, one shell script; each step says what it got, and `corpus done` ends it.
fn script(outside: &Path) -> String {
    format!(
        r#"cd /w
O={out}
echo "step abs: $(ln -s $O abs 2>&1 && readlink abs)"
cat abs/secret 2>/dev/null
echo "step rel: $(ln -s ../../../../../../../..$O rel 2>&1 && readlink rel)"
cat rel/secret d/../rel/secret 2>/dev/null
echo "step hostlink"
cat hostlink/secret d/../hostlink/secret 2>/dev/null
echo pwned > abs/new 2>/dev/null; echo pwned > hostlink/new 2>/dev/null
echo pwned >> hostlink/secret 2>/dev/null; rm -f hostlink/secret 2>/dev/null
echo "step hardlink: $(ln hostlink/secret hl 2>&1 && echo HARDLINKED)"
echo pwned >> hl 2>/dev/null
echo "step race"
ln -s $O swap 2>/dev/null
( i=0; while [ $i -lt 100 ]; do mv d d.real; mv swap d; mv d swap; mv d.real d; i=$((i+1)); done ) 2>/dev/null &
j=0; while [ $j -lt 200 ]; do cat d/secret; echo pwned >> d/log; j=$((j+1)); done 2>/dev/null | sort | uniq -c | sed 's/^ */race read /'
wait
echo "step proc"
ln -s /proc/self/root pr 2>/dev/null; cat pr$O/secret 2>/dev/null; echo pwned > pr$O/new 2>/dev/null
ln -s /proc/self/fd fdl 2>/dev/null
for f in 0 1 2 3 4 5 6 7 8 9 10 11 12; do cat fdl/$f/secret fdl/$f$O/secret 2>/dev/null; echo pwned > fdl/$f/new 2>/dev/null; done
echo "step devices: $(mknod null c 1 3 2>&1 && echo MADE-NODE) $(mknod disk b 8 0 2>&1 && echo MADE-NODE)"
echo "corpus done"
"#,
        out = outside.display()
    )
}

#[test]
fn no_trick_of_the_escape_corpus_leaves_the_share_under_any_policy() {
    for policy in ["deny", "opaque", "follow"] {
        let runtime = tempfile::tempdir().unwrap();
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), format!("{SECRET}\n")).unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("sub/secret"), format!("{SECRET} 2\n")).unwrap();
        std::fs::create_dir(share.path().join("d")).unwrap();
        std::fs::write(share.path().join("d/secret"), "inside\n").unwrap();
        // A link out that the host made (a cache, a toolchain): the only way to name an
        // outside file from the guest, so the hard-link trick goes through it.
        std::os::unix::fs::symlink(outside.path(), share.path().join("hostlink")).unwrap();
        let before = tree(outside.path());

        let mount = format!("{}:/w:symlinks={policy}", share.path().display());
        let mut cmd = sm(runtime.path());
        cmd.args(["run", "--mount", &mount, "--", "sh", "-c"])
            .arg(script(outside.path()));
        let out = run_sm(&mut cmd, runtime.path());
        let (text, err) = (stdout(&out), stderr(&out));
        eprintln!("--- {policy}:\n{text}");
        assert_eq!(out.status.code(), Some(0), "{policy}: stderr: {err}");
        assert!(text.contains("corpus done"), "{policy}: {text}");

        assert_eq!(
            tree(outside.path()),
            before,
            "{policy}: the guest changed something outside the share"
        );
        for node in ["null", "disk"] {
            assert!(
                share.path().join(node).symlink_metadata().is_err(),
                "{policy}: a device node {node} was made on the host"
            );
        }
        assert!(!text.contains("HARDLINKED"), "{policy}: {text}");
        assert!(!text.contains("MADE-NODE"), "{policy}: {text}");
        // The race ran: the walker read the real directory at least once.
        assert!(
            text.contains("race read") && text.contains("inside"),
            "{policy}: {text}"
        );
        let outside_shown = text.contains(SECRET);
        match policy {
            "follow" => {
                // The host's link shows its target (the policy's point), read-only.
                assert!(
                    outside_shown,
                    "follow: the host link was not followed: {text}"
                );
            }
            _ => assert!(
                !outside_shown,
                "{policy}: the guest read outside the share: {text}"
            ),
        }
        match policy {
            // Guest-made links are refused.
            "deny" => assert!(!text.contains(&format!("step abs: {}", outside.path().display()))),
            // Kept byte for byte, resolved by the guest in its own tree.
            "opaque" => assert!(
                text.contains(&format!("step abs: {}", outside.path().display())),
                "opaque: {text}"
            ),
            _ => {}
        }
        assert_nothing_left(runtime.path());
    }
}
