//! The transports trust nothing they have not checked (issue "Prove before trusting", items 9-12): the agent
//! brought to the primary runs only once the primary has checked it, the data port of the agent withstands
//! strangers, local port forwards are private to the run, and the rsync daemon's configuration and what it sends
//! are held to what the run planned. Each scenario fails on the code before its fix.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

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

/// Item 12: the rsync transport creates no symlink but those the primary's listing planned, and its daemon admits
/// no more connections than the run opens. A file the listing saw is replaced by a symlink on the primary while
/// the copy runs: the replica must not get that symlink (rsync skips it; the file counts as vanished). Before,
/// rsync ran with `-l` and made whatever link the daemon sent, and rsyncd.conf set no `max connections`.
#[test]
fn rsync_makes_no_symlink_the_listing_did_not_plan() {
    let s = Setup::with_pgbench("t-rsync-links", 1);
    let (big, swapped) = (s.primary.data.join("big.bin"), s.primary.data.join("swapped"));
    fs::write(&big, vec![1u8; 16 << 20]).unwrap();
    fs::write(&swapped, "a plain file when listed\n").unwrap();
    s.lab.chown(&big);
    s.lab.chown(&swapped);
    let mut run = s.pgclone();
    run.parallel = 2;
    run.args(["--transport", "rsync"]);
    // Largest first: the small file's batch comes seconds after the listing, at 4 MiB/s.
    let running = run.spawn_slowly("4M");
    fs::remove_file(&swapped).unwrap();
    std::os::unix::fs::symlink("/etc", &swapped).unwrap();
    let daemons = entries_starting_with(&s.lab.remote_tmpdir(), "pgclone-rsyncd.");
    assert_eq!(daemons.len(), 1, "one rsync daemon's directory: {daemons:?}");
    let conf = fs::read_to_string(daemons[0].join("rsyncd.conf")).unwrap();
    // Two workers and pg_control's fetch.
    assert!(conf.lines().any(|l| l == "max connections = 3"), "rsyncd.conf:\n{conf}");
    let out = running.wait();
    out.assert_success();
    println!("{}", out.summary_line());
    let landed = fs::symlink_metadata(s.replica.join("swapped"));
    assert!(!landed.as_ref().is_ok_and(|m| m.is_symlink()), "the replica got the daemon's symlink: {landed:?}");
    assert_eq!(fs::read(s.replica.join("big.bin")).unwrap().len(), 16 << 20);
    assert_primary_clean(&s.lab, &s.primary);
}

/// Item 12: a path written into rsyncd.conf cannot add directives. A tablespace whose directory's name holds a
/// newline and a directive of rsyncd.conf's is refused, in one line, before any daemon starts. Before, the
/// directive landed in rsyncd.conf as a line of its own and the module's path was cut at the newline.
#[test]
fn rsyncd_conf_takes_no_directive_from_a_path() {
    let lab = Lab::new("t-rsyncd-conf");
    let primary = Postgres::primary(&lab, "primary", &[]);
    let sshd = Sshd::start(&lab);
    let ts = lab.path().join("ts\nlist = yes");
    fs::create_dir(&ts).unwrap();
    lab.chown(&ts);
    primary.psql(&format!("create tablespace odd location E'{}'", ts.display().to_string().replace('\n', "\\n")));
    primary.psql("create table in_odd (i int) tablespace odd; insert into in_odd values (1)");
    let replica = lab.path().join("replica");
    let mut run = Pgclone::new(&primary, &sshd, &replica);
    let here = lab.path().join("ts-here");
    run.args(["--transport", "rsync", "-T"]).arg(format!(
        "{}={}",
        ts.display().to_string().replace('=', "\\="),
        here.display()
    ));
    let out = run.run();
    let line = assert_one_error_line(&out);
    assert!(line.contains("has a control character or % in its path") && line.contains("ts?list = yes"), "{line}");
    println!("{line}");
    assert_clean_after_error(&lab, &primary, &replica);
}

/// The TCP ports listening on this host that belong to processes of this lab's pgclone runs (pgclone itself and
/// the ssh clients it starts), as `comm pid port`: /proc/net/tcp{,6} rows in state LISTEN (0A) whose socket is one
/// of their open files.
fn tcp_listeners_of_pgclone(lab: &Lab) -> Vec<String> {
    let tag = format!("{}\0", lab.tag());
    let mut inodes = std::collections::HashMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default().trim().to_string();
        let environ = fs::read(p.join("environ")).unwrap_or_default();
        if !["pgclone", "ssh"].contains(&comm.as_str()) || !environ.windows(tag.len()).any(|w| w == tag.as_bytes()) {
            continue;
        }
        for fd in fs::read_dir(p.join("fd")).into_iter().flatten().flatten() {
            let link = fs::read_link(fd.path()).unwrap_or_default().display().to_string();
            if let Some(inode) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) {
                inodes.insert(inode.to_string(), format!("{comm} {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for row in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" {
                if let Some(owner) = inodes.get(f[9]) {
                    let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap();
                    found.push(format!("{owner} port {port}"));
                }
            }
        }
    }
    found
}

/// Item 9: local port forwards are private to the run. An rsync clone under --limit-net-bw with
/// --bypass-rep-traffic: every forward (rsync's per worker, PostgreSQL's tunnel) and every bandwidth proxy listens
/// on a Unix socket in the run's private directory (0700; no access for others), and neither pgclone nor its ssh
/// clients listen on any TCP port. Before, each of them listened on a port of 127.0.0.1, which any local user
/// could connect to and reach the primary's loopback through our ssh login.
#[test]
fn forwards_listen_only_on_sockets_in_the_run_directory() {
    let s = Setup::with_pgbench("t-private-forwards", 1);
    let big = s.primary.data.join("big.bin");
    fs::write(&big, vec![1u8; 24 << 20]).unwrap();
    s.lab.chown(&big);
    let mut run = s.pgclone();
    run.args(["--transport", "rsync", "--bypass-rep-traffic"]);
    let running = run.spawn_slowly("4M");
    let run_dirs = entries_starting_with(&s.lab.tmpdir(), "pgclone-");
    assert_eq!(run_dirs.len(), 1, "{run_dirs:?}");
    let dir_mode = fs::metadata(&run_dirs[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "the run directory");
    // The socket files in the run directory, as `name mode`.
    let sockets = || {
        let mut found = Vec::new();
        for e in fs::read_dir(&run_dirs[0]).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                found.push(format!("{} {:o}", e.file_name().to_string_lossy(), meta.permissions().mode() & 0o777));
            }
        }
        found.sort();
        found
    };
    // Two workers, each with its forward and proxy, besides the tunnel.
    wait_for("every worker's forward and proxy", Duration::from_secs(20), || {
        let listeners = tcp_listeners_of_pgclone(&s.lab);
        assert!(listeners.is_empty(), "TCP ports of pgclone's: {listeners:?}");
        let found = sockets();
        let count = |end: &str| found.iter().filter(|n| n.split(' ').next().unwrap().ends_with(end)).count();
        (count("-forward.sock") >= 2 && count("-limited.sock") >= 2)
            .then_some(())
            .ok_or(format!("sockets {found:?}, TCP ports {:?}", tcp_listeners_of_pgclone(&s.lab)))
    });
    let found = sockets();
    println!("sockets in the run directory: {found:?}");
    assert!(found.iter().any(|n| n.starts_with(&format!(".s.PGSQL.{} ", s.primary.port))), "the tunnel's: {found:?}");
    for socket in &found {
        let mode = u32::from_str_radix(socket.rsplit(' ').next().unwrap(), 8).unwrap();
        assert_eq!(mode & 0o077, 0, "a socket others may use: {socket}");
    }
    let listeners = tcp_listeners_of_pgclone(&s.lab);
    assert!(listeners.is_empty(), "TCP ports of pgclone's: {listeners:?}");
    let out = running.wait();
    out.assert_success();
    println!("{}", out.summary_line());
    assert_primary_clean(&s.lab, &s.primary);
}
