//! Approvers whose user and group come from NSS rather than `/etc/passwd` and
//! `/etc/group`, as on hosts that take them from LDAP or SSSD: here from Debian's
//! `libnss-extrausers`, added to `/etc/nsswitch.conf` for the test and taken out after.
//! Host only: it tests user space, and the VM guests have no NSS modules.

use std::{fs, path::Path};

use tests::daemon::{Daemon, HOLD_FLAGGED, assert_refused, finish, stderr};

const NSSWITCH: &str = "/etc/nsswitch.conf";
const EXTRAUSERS: &str = "/var/lib/extrausers";
/// An approver and their group, known to extrausers only.
const APPROVER: (&str, u32) = ("ktnssapprover", 47_110);
const GROUP: (&str, u32) = ("ktnssapprovers", 47_111);
/// A user in no approver group, also known to extrausers only.
const STRANGER: (&str, u32) = ("ktnssstranger", 47_112);

/// `extrausers` as a source of users and groups for as long as it lives.
struct ExtraUsers {
    nsswitch: String,
}

impl ExtraUsers {
    fn add() -> Self {
        let nsswitch = fs::read_to_string(NSSWITCH).expect("nsswitch.conf");
        let with = nsswitch
            .lines()
            .map(|line| match line.split_once(':') {
                Some(("passwd" | "group", _)) if !line.contains("extrausers") => format!("{line} extrausers"),
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::create_dir_all(EXTRAUSERS).expect("extrausers dir");
        let user = |(name, id): (&str, u32), gid: u32| {
            format!("{name}:x:{id}:{gid}::/nonexistent:/usr/sbin/nologin\n")
        };
        fs::write(
            Path::new(EXTRAUSERS).join("passwd"),
            user(APPROVER, APPROVER.1) + &user(STRANGER, STRANGER.1),
        )
        .expect("extrausers passwd");
        // The approver is a member only as the group lists it: not by primary group.
        fs::write(Path::new(EXTRAUSERS).join("group"), format!("{}:x:{}:{}\n", GROUP.0, GROUP.1, APPROVER.0))
            .expect("extrausers group");
        fs::write(NSSWITCH, with + "\n").expect("write nsswitch.conf");
        Self { nsswitch }
    }
}

impl Drop for ExtraUsers {
    fn drop(&mut self) {
        let _ = fs::write(NSSWITCH, &self.nsswitch);
        let _ = fs::remove_file(Path::new(EXTRAUSERS).join("passwd"));
        let _ = fs::remove_file(Path::new(EXTRAUSERS).join("group"));
    }
}

/// The approver group and its member come from NSS: the member approves; a user NSS
/// knows in no such group is refused; held processes are shown by the user names NSS gives.
#[test]
fn an_approver_whose_group_comes_from_nss_may_approve() {
    let _extra = ExtraUsers::add();
    let daemon = Daemon::start_with_config(HOLD_FLAGGED, &format!("approver_group = \"{}\"", GROUP.0));
    let agent = daemon.run_agent(&daemon.flagged(), &["approved-by-nss"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["user"], "nobody");
    let id = hold["id"].as_str().expect("id").to_owned();

    let stranger = daemon.cli_as(STRANGER.1, STRANGER.1, &["approve", &id]);
    assert_refused(&stranger, &format!("uid {} is neither root nor in group \"{}\"", STRANGER.1, GROUP.0));
    let approved = daemon.cli_as(APPROVER.1, APPROVER.1, &["approve", &id, "--reason", "nss"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert_eq!(finish(agent), (0, "approved-by-nss\n".to_owned()));
    let decision = daemon.wait_record(0, |e| e["type"] == "decision" && e["id"] == id.as_str());
    assert_eq!(decision["by_user"], APPROVER.0, "the approver is named as NSS names them");
}
