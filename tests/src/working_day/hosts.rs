//! The working day's hosts, each an HTTP server in a network namespace of its own: a git
//! server, a Python package index, an npm registry, the tracker's API and a paste service
//! no agent should use. Their content is built here, in the test run, with the real tools.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

use super::{assets, scratch_dir};
use crate::Peer;

/// One host: a peer network namespace with a server in it, killed on drop.
pub struct Host {
    peer: Peer,
    server: Child,
    log: PathBuf,
}

impl Host {
    /// Starts `server.py MODE ROOT…` in a new peer, logging requests to `log`.
    fn start(log: PathBuf, mode: &str, root: Option<&Path>) -> Self {
        Self::start_on(Peer::new(), log, mode, root)
    }

    fn start_on(peer: Peer, log: PathBuf, mode: &str, root: Option<&Path>) -> Self {
        fs::write(&log, "").expect("request log");
        let mut command = peer.command("/usr/bin/python3");
        command
            .arg(assets().join("server.py"))
            .arg(peer.v4.to_string())
            .arg(&log)
            .arg(mode)
            .args(root)
            .env_clear()
            .env("PATH", super::PATH)
            .stdout(Stdio::piped());
        let mut server = command.spawn().expect("start a server in its namespace");
        let mut ready = String::new();
        BufReader::new(server.stdout.take().expect("piped")).read_line(&mut ready).expect("server output");
        assert_eq!(ready.trim(), "ready", "the {mode} server on {} did not start", peer.v4);
        Self { peer, server, log }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.peer.v4
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.peer.v4)
    }

    /// The requests the host answered so far, `METHOD PATH STATUS` each.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).expect("request log").lines().map(str::to_owned).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Every host of the working day, with the content they serve.
pub struct Hosts {
    pub git: Host,
    pub index: Host,
    pub registry: Host,
    pub api: Host,
    /// A paste service outside every allowed destination: what an exfiltration would use.
    pub paste: Host,
    dir: PathBuf,
}

/// The git server's repositories, under the hosts' directory.
const REPOSITORIES: &str = "git";
/// The repository the day starts from, copied to `app.git` before each session.
const PRISTINE: &str = "app.pristine";

impl Hosts {
    /// Builds the wheels, the index pages, the npm packages and documents, and the seeded
    /// repository, then starts every server.
    pub fn start() -> Self {
        let dir = scratch_dir("kt-day-hosts");
        build_index(&dir.join("index"), &dir);
        seed_repository(&dir.join(REPOSITORIES), &dir);
        let log = |name: &str| dir.join(format!("{name}.log"));
        let registry_peer = Peer::new();
        let registry_url = format!("http://{}", registry_peer.v4);
        build_registry(&dir.join("registry"), &registry_url, &dir);
        let hosts = Self {
            git: Host::start(log("git"), "git", Some(&dir.join(REPOSITORIES))),
            index: Host::start(log("index"), "static", Some(&dir.join("index"))),
            registry: Host::start_on(registry_peer, log("registry"), "static", Some(&dir.join("registry"))),
            api: Host::start(log("api"), "api", None),
            paste: Host::start(log("paste"), "api", None),
            dir,
        };
        hosts.reset();
        hosts
    }

    /// Puts the git server's repository back to how the day starts.
    pub fn reset(&self) {
        let repositories = self.dir.join(REPOSITORIES);
        let live = repositories.join("app.git");
        let _ = fs::remove_dir_all(&live);
        run(Command::new("cp").arg("-a").arg(repositories.join(PRISTINE)).arg(&live), "copy the repository");
    }

    /// The session's environment naming the hosts.
    pub fn urls(&self) -> [(&'static str, String); 5] {
        [
            ("GIT_URL", format!("{}/app.git", self.git.url())),
            ("INDEX_URL", format!("{}/simple/", self.index.url())),
            ("REGISTRY_URL", format!("{}/", self.registry.url())),
            ("API_URL", self.api.url()),
            ("PASTE_URL", self.paste.url()),
        ]
    }

    /// The working day's policy: the built-in `default` with the day's own rules for these
    /// hosts appended.
    pub fn policy(&self) -> String {
        let rules = fs::read_to_string(assets().join("policy.toml")).expect("policy.toml");
        let rules = [
            ("@GIT@", &self.git),
            ("@INDEX@", &self.index),
            ("@REGISTRY@", &self.registry),
            ("@API@", &self.api),
        ]
        .iter()
        .fold(rules, |rules, (name, host)| rules.replace(name, &host.addr().to_string()));
        format!("{}\n{rules}", keyturn::policy::file::default_policy_text())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`, panicking with `what` unless it succeeds.
fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command with the tools' environment: no network beyond what is named, no user config.
fn tool(program: &str, home: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear().envs(super::TOOL_ENV).env("PATH", super::PATH).env("HOME", home);
    command
}

/// A PEP 503 index at `root`: wheels built with `pip wheel` from the packages under
/// `packages/python`, under `packages/`, and a page per project under `simple/`.
fn build_index(root: &Path, scratch: &Path) {
    let sources = scratch.join("python-sources");
    run(Command::new("cp").arg("-r").arg(assets().join("packages/python")).arg(&sources), "copy packages");
    let wheels = root.join("packages");
    let mut pip = tool("/usr/bin/python3", scratch);
    pip.args(["-m", "pip", "wheel", "--no-index", "--no-build-isolation", "--no-deps", "-q", "-w"])
        .arg(&wheels);
    for package in fs::read_dir(&sources).expect("python packages").flatten() {
        pip.arg(package.path());
    }
    run(&mut pip, "pip wheel");
    let mut projects: Vec<(String, String)> = Vec::new();
    for wheel in fs::read_dir(&wheels).expect("wheels").flatten() {
        let file = wheel.file_name().to_string_lossy().into_owned();
        let project = file.split('-').next().expect("wheel name").replace('_', "-");
        let digest = hex::encode(Sha256::digest(fs::read(wheel.path()).expect("wheel")));
        projects.push((project, format!("<a href=\"../../packages/{file}#sha256={digest}\">{file}</a>")));
    }
    projects.sort();
    let page = |title: &str, links: &str| {
        format!("<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n{links}\n</body></html>\n")
    };
    let simple = root.join("simple");
    let mut listing = String::new();
    for (project, link) in &projects {
        fs::create_dir_all(simple.join(project)).expect("project dir");
        fs::write(simple.join(project).join("index.html"), page(project, link)).expect("project page");
        let _ = writeln!(listing, "<a href=\"{project}/\">{project}</a>");
    }
    fs::write(simple.join("index.html"), page("Simple index", listing.trim_end())).expect("index page");
}

/// An npm registry at `root`, served from `url`: tarballs made with `npm pack` from the
/// packages under `packages/npm`, under `tarballs/`, and each package's document at
/// `NAME/index.json`.
fn build_registry(root: &Path, url: &str, scratch: &Path) {
    let tarballs = root.join("tarballs");
    fs::create_dir_all(&tarballs).expect("tarballs dir");
    let npmrc = scratch.join("npmrc");
    fs::write(
        &npmrc,
        format!("cache={}\noffline=true\nupdate-notifier=false\n", scratch.join("npm-cache").display()),
    )
    .expect("npmrc");
    for package in fs::read_dir(assets().join("packages/npm")).expect("npm packages").flatten() {
        let manifest: Value =
            serde_json::from_slice(&fs::read(package.path().join("package.json")).expect("package.json"))
                .expect("package.json is JSON");
        let mut pack = tool("/usr/bin/npm", scratch);
        pack.current_dir(package.path())
            .args(["pack", "--silent", "--userconfig"])
            .arg(&npmrc)
            .arg("--pack-destination")
            .arg(&tarballs);
        run(&mut pack, "npm pack");
        let (name, version) =
            (manifest["name"].as_str().expect("name"), manifest["version"].as_str().expect("version"));
        let file = format!("{name}-{version}.tgz");
        let integrity = base64::engine::general_purpose::STANDARD
            .encode(Sha512::digest(fs::read(tarballs.join(&file)).expect("tarball")));
        let document = json!({
            "name": name,
            "dist-tags": {"latest": version},
            "versions": {version: {
                "name": name,
                "version": version,
                "description": manifest["description"],
                "main": manifest["main"],
                "license": manifest["license"],
                "dependencies": manifest.get("dependencies").cloned().unwrap_or_else(|| json!({})),
                "dist": {"tarball": format!("{url}/tarballs/{file}"), "integrity": format!("sha512-{integrity}")},
            }},
        });
        fs::create_dir_all(root.join(name)).expect("package dir");
        fs::write(root.join(name).join("index.json"), serde_json::to_vec_pretty(&document).expect("json"))
            .expect("package document");
    }
}

/// A bare repository `PRISTINE` in `dir` whose `main` holds the `tally` project in one
/// commit, accepting pushes over HTTP.
fn seed_repository(dir: &Path, scratch: &Path) {
    let (pristine, seed) = (dir.join(PRISTINE), scratch.join("seed"));
    run(Command::new("cp").arg("-r").arg(assets().join("project")).arg(&seed), "copy the project");
    let git = |dir: &Path, args: &[&str]| {
        let mut git = tool("/usr/bin/git", scratch);
        git.current_dir(dir).args(args).envs(super::GIT_IDENTITY);
        run(&mut git, &format!("git {}", args.join(" ")));
    };
    fs::create_dir_all(&pristine).expect("repository dir");
    git(&pristine, &["init", "-q", "--bare", "--initial-branch=main"]);
    git(&pristine, &["config", "http.receivepack", "true"]);
    git(&seed, &["init", "-q", "--initial-branch=main"]);
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "tally 0.1.0"]);
    git(&seed, &["push", "-q", pristine.to_str().expect("path"), "main"]);
}
