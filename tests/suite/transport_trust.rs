//! The transports trust nothing they have not checked (issue "Prove before trusting", items 9-12): the agent
//! brought to the primary runs only once the primary has checked it, the data port of the agent withstands
//! strangers, local port forwards are private to the run, and the rsync daemon's configuration and what it sends
//! are held to what the run planned. Each scenario fails on the code before its fix.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A `head` for the primary host's ssh sessions that, asked for the pgclone agent's bytes (`head -c SIZE`, SIZE
/// of a binary), reads them all but writes instead a shell script that creates `ran` when it is executed:
/// `short`, just that script (a copy cut short); else the script padded with comment bytes to SIZE (a copy of
/// the right size, changed). Every other use of head goes to the real one. Written into `bin`.
fn tampering_head(lab: &Lab, bin: &Path, short: bool, ran: &Path) {
    let pad = if short { "" } else { " && yes '#' | tr -d '\\n'" };
    let head = lab.write(
        bin.join("head"),
        &format!(
            "#!/bin/sh\n\
             if [ \"$1\" = -c ] && [ \"$2\" -gt 100000 ]; then\n\
               /usr/bin/head -c \"$2\" > /dev/null\n\
               {{ printf '#!/bin/sh\\ntouch {ran}\\nexit 0\\n'{pad}; }} | /usr/bin/head -c \"$2\"\n\
               exit 0\n\
             fi\n\
             exec /usr/bin/head \"$@\"\n",
            ran = ran.display()
        ),
    );
    fs::set_permissions(&head, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Item 11: the agent brought to the primary runs only after the primary checked its size and SHA-256, before
/// exec. A primary host whose copy arrives short, or of the right size but changed, refuses to run it, and pgclone
/// says so in one line. Before, the primary's shell printed the SHA-256 and ran the copy at once: pgclone objected,
/// but the tampered copy had already run (`ran` existed).
#[test]
fn a_short_or_changed_agent_copy_never_runs() {
    let lab = Lab::new("t-agent-copy");
    let primary = Postgres::primary(&lab, "primary", &[]);
    let bin = lab.mkdir("tampering-bin");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = Sshd::start_with_path(&lab, &bin);
    for (short, why) in [(true, "the copy there is incomplete"), (false, "the copy there is not what was sent")] {
        let ran = lab.path().join(format!("ran-{short}"));
        tampering_head(&lab, &bin, short, &ran);
        let replica = lab.path().join(format!("replica-{short}"));
        let out = Pgclone::new(&primary, &sshd, &replica).run();
        // What the primary's shell would have run, it would have run before pgclone saw the verdict.
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!ran.exists(), "short {short}: the changed copy of the agent ran on the primary\n{}", out.report());
        let line = assert_one_error_line(&out);
        assert!(line.contains(why) && line.contains("it was not run"), "short {short}: {line}");
        println!("short {short}: {line}");
        assert_clean_after_error(&lab, &primary, &replica);
    }
}
