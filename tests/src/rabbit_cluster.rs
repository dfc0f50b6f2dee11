//! A real three-node RabbitMQ cluster for failover tests, beside the shared broker: three
//! `rabbitmq-server` nodes of the test's own (`genq-<id>-a@localhost`, `-b`, `-c`), each on free
//! loopback ports (AMQP and Erlang distribution) with its own data and logs, no plugins and a
//! private Erlang cookie in a temporary folder, clustered with `rabbitmqctl join_cluster`. A node
//! can be killed (SIGKILL) and started again with its data; all are killed when dropped.
//!
//! The nodes run as the test's user: on Debian the real scripts in `/usr/lib/rabbitmq/bin` are
//! used, not the `/usr/sbin` wrappers, which switch to the `rabbitmq` user (and so to its HOME and
//! cookie). `rabbitmqctl` finds the cluster's cookie through `HOME`. A cluster takes 30 to 40 s to
//! start on two busy cores (boot in parallel, then two joins one after the other); a killed node
//! about 12 s to run again, and a quorum queue it led has a new leader about 1 s after the kill.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// How long a node may take to boot (slow CI machines, a build running beside the tests).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Prefix of a cluster's folder in [`crate::scratch_dir`].
const DIR_PREFIX: &str = "rabbit-cluster-";

/// Path of a RabbitMQ script: `GENQ_TEST_RABBITMQ_SBIN/<name>` if set, else Debian's real one in
/// `/usr/lib/rabbitmq/bin` (the `/usr/sbin` wrapper runs it as the `rabbitmq` user), else `PATH`'s.
fn sbin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GENQ_TEST_RABBITMQ_SBIN") {
        return PathBuf::from(dir).join(name);
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// Path of `epmd`: on `PATH`, else Erlang's own.
fn epmd() -> PathBuf {
    crate::prometheus::tool("epmd").unwrap_or_else(|| PathBuf::from("/usr/lib/erlang/bin/epmd"))
}

/// `epmd -names`, or `None` when no epmd answers.
fn epmd_names() -> Option<String> {
    let out = Command::new(epmd()).arg("-names").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts epmd (loopback only) unless one runs already; a node would start it too, but then as
/// its own child, on all interfaces.
fn ensure_epmd() {
    if epmd_names().is_none() {
        let _ = Command::new(epmd()).arg("-daemon").env("ERL_EPMD_ADDRESS", "127.0.0.1").stdin(Stdio::null()).status();
    }
}

/// State, parent pid and command name of a process, from `/proc/<pid>/stat`; `None` when there
/// is none.
fn proc_stat(pid: u32) -> Option<(char, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// Whether a process runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| !matches!(state, 'Z' | 'X'))
}

/// The Erlang VM started by the `rabbitmq-server` script `wrapper` (which runs it in the
/// background and waits for it): its child, `beam.smp` once booted.
fn beam_of(wrapper: u32) -> Option<u32> {
    let children: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_stat(pid).filter(|(state, ppid, _)| *ppid == wrapper && *state != 'Z').map(|(_, _, comm)| (pid, comm)))
        .collect();
    children.iter().find(|(_, comm)| comm == "beam.smp").or(children.first()).map(|(pid, _)| *pid)
}

/// SIGKILL.
fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
}

/// The last `n` lines of a file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills the nodes of clusters whose test process died without dropping them (killed, or
/// timed out), and removes their folders. A node is only killed if its environment names that
/// folder, so a recycled pid is never hit.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(crate::scratch_dir()) else { return };
    for dir in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if !dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(DIR_PREFIX)) {
            continue;
        }
        // No owner file yet: a cluster being set up right now.
        let Some(owner) = std::fs::read_to_string(dir.join("owner")).ok().and_then(|s| s.trim().parse::<u32>().ok()) else { continue };
        if alive(owner) {
            continue;
        }
        for node in std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()) {
            let Some(pid) = std::fs::read_to_string(node.join("pid")).ok().and_then(|s| s.trim().parse::<u32>().ok()) else { continue };
            let mark = format!("RABBITMQ_MNESIA_BASE={}", node.join("mnesia").display());
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
                sigkill(pid);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// One node of a [`RabbitCluster`].
struct Node {
    /// `genq-<id>-a@localhost`.
    name: String,
    /// `genq-<id>-a`, its name in epmd.
    short: String,
    /// Its folder: config, `mnesia/` (data), `log/`, `stdout.log`, `pid`.
    dir: PathBuf,
    amqp_port: u16,
    dist_port: u16,
    /// The `rabbitmq-server` script while the node runs (the VM is its child).
    wrapper: Option<Child>,
    /// The VM's pid, once booted.
    beam: Option<u32>,
}

impl Node {
    /// Its main log file.
    fn log(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.name))
    }
}

/// Three clustered RabbitMQ nodes of the test's own, killed (and their folder removed) when
/// dropped. Nodes are numbered 0, 1, 2 in every method.
pub struct RabbitCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl RabbitCluster {
    /// Starts three nodes, waits until they run and clusters them (1 and 2 join 0); panics naming
    /// the node and its log if anything fails.
    pub fn start() -> Self {
        reap_stale();
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = crate::scratch_dir().join(format!("{DIR_PREFIX}{id}"));
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("rabbit cluster folder");
        std::fs::write(dir.join("owner"), std::process::id().to_string()).expect("rabbit cluster owner file");
        // The cluster's own cookie (so it can never talk to the shared broker), read by the
        // nodes and by rabbitmqctl from $HOME; Erlang wants it private.
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("GENQ{}", uuid::Uuid::new_v4().simple()).to_uppercase()).expect("erlang cookie");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).expect("erlang cookie mode");
        }
        // An empty env file, so /etc/rabbitmq/rabbitmq-env.conf (the shared broker's node name)
        // is not read.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        ensure_epmd();

        let mut taken = HashSet::new();
        let mut port = || loop {
            let p = free_port();
            if taken.insert(p) {
                return p;
            }
        };
        let mut nodes = Vec::new();
        for letter in ["a", "b", "c"] {
            let short = format!("genq-{id}-{letter}");
            let node_dir = dir.join(&short);
            std::fs::create_dir_all(node_dir.join("log")).expect("node log folder");
            std::fs::create_dir_all(node_dir.join("mnesia")).expect("node data folder");
            let (amqp_port, dist_port) = (port(), port());
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                format!("listeners.tcp.1 = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n"),
            )
            .expect("rabbitmq.conf");
            std::fs::write(node_dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
            nodes.push(Node { name: format!("{short}@localhost"), short, dir: node_dir, amqp_port, dist_port, wrapper: None, beam: None });
        }
        let mut cluster = RabbitCluster { dir, nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.await_boot(i);
        }
        let seed = cluster.nodes[0].name.clone();
        for i in 1..3 {
            cluster.ctl(i, &["-q", "stop_app"]);
            cluster.ctl(i, &["-q", "join_cluster", &seed]);
            cluster.ctl(i, &["-q", "start_app"]);
        }
        cluster.await_clustered(0);
        cluster
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of each node (guest may log in from loopback).
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.amqp_port)).collect()
    }

    /// [`RabbitCluster::amqp_urls`] joined with commas, as `--amqp-url` and [`crate::Sandbox::with_amqp`] take them.
    pub fn amqp_url_list(&self) -> String {
        self.amqp_urls().join(",")
    }

    /// Node `i`'s Erlang node name (`genq-<id>-a@localhost`).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s AMQP port.
    pub fn amqp_port(&self, i: usize) -> u16 {
        self.nodes[i].amqp_port
    }

    /// Node `i`'s main log file.
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.nodes[i].log()
    }

    /// Whether node `i` runs (it has not been [killed](RabbitCluster::kill) since it last started).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].wrapper.is_some()
    }

    /// Index of the node that leads quorum queue `queue` in vhost `/`, as a running node sees it
    /// (just after a kill, it may still name the killed node until a new leader is elected).
    /// Panics if no running node lists the queue with a leader.
    pub fn leader_of(&self, queue: &str) -> usize {
        let i = (0..3).find(|&i| self.is_running(i)).expect("no node of the rabbit cluster runs");
        let out = self.ctl(i, &["-s", "list_queues", "-p", "/", "name", "leader"]);
        let leader = out.lines().filter_map(|l| l.split_once('\t')).find(|(name, _)| *name == queue).map(|(_, leader)| leader.trim());
        leader
            .and_then(|leader| self.nodes.iter().position(|n| n.name == leader))
            .unwrap_or_else(|| panic!("no leader for queue {queue} on {} (list_queues name leader):\n{out}", self.nodes[i].name))
    }

    /// Kills node `i` (SIGKILL to its Erlang VM, no clean shutdown) and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        assert!(self.is_running(i), "rabbit node {} is not running", self.nodes[i].name);
        self.stop(i);
    }

    /// Starts node `i` again with its data (after [`RabbitCluster::kill`]), and waits until it
    /// runs and is back in the cluster with the other running nodes.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "rabbit node {} is running: kill it first", self.nodes[i].name);
        self.spawn(i);
        self.await_boot(i);
        self.await_clustered(i);
    }

    /// `rabbitmqctl -n <node i> args...` (with the cluster's cookie); its stdout. Panics with its
    /// output if it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_ctl(i, args);
        assert!(
            ok,
            "rabbitmqctl -n {} {} failed:\n{stdout}{stderr}\n(node log: {})",
            self.nodes[i].name,
            args.join(" "),
            self.nodes[i].log().display()
        );
        stdout
    }

    /// `rabbitmqctl -n <node i> args...`: success, stdout and stderr.
    fn try_ctl(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sbin("rabbitmqctl"))
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env_remove("RABBITMQ_USE_LONGNAME")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", sbin("rabbitmqctl").display()));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Starts node `i`'s `rabbitmq-server` (in the foreground, as the test's child; output
    /// appended to its `stdout.log`).
    fn spawn(&mut self, i: usize) {
        let home = self.dir.join("home");
        let env_file = self.dir.join("rabbitmq-env.conf");
        let node = &mut self.nodes[i];
        let out = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("stdout.log")).expect("node stdout.log");
        let err = out.try_clone().expect("node stdout.log");
        let child = Command::new(sbin("rabbitmq-server"))
            .current_dir(&node.dir)
            .env("HOME", home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", env_file)
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", node.dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", node.dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_USE_LONGNAME")
            .env_remove("RABBITMQ_ALLOW_INPUT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", sbin("rabbitmq-server").display()));
        node.wrapper = Some(child);
        node.beam = None;
    }

    /// Panics about node `i` with the end of its output (the folder is kept when panicking).
    fn fail(&self, i: usize, what: &str) -> ! {
        let node = &self.nodes[i];
        let stdout = node.dir.join("stdout.log");
        panic!(
            "rabbit node {} (AMQP port {}, distribution port {}) {what}; log: {}\n--- last lines of {}:\n{}",
            node.name,
            node.amqp_port,
            node.dist_port,
            node.log().display(),
            stdout.display(),
            tail(&stdout, 40)
        )
    }

    /// Whether node `i`'s script has exited (the node died).
    fn exited(&mut self, i: usize) -> bool {
        self.nodes[i].wrapper.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Polls `probe` every `pause` until it answers `Ok`; fails naming node `i` when its script
    /// exits (`during` says what the node was doing) or when `deadline` passes (with the probe's
    /// last answer).
    fn poll(&mut self, i: usize, deadline: Instant, pause: Duration, during: &str, mut probe: impl FnMut(&Self) -> Result<(), String>) {
        loop {
            if self.exited(i) {
                self.fail(i, &format!("exited while {during}"));
            }
            match probe(self) {
                Ok(()) => return,
                Err(why) if Instant::now() > deadline => self.fail(i, &why),
                Err(_) => std::thread::sleep(pause),
            }
        }
    }

    /// Waits until node `i` has registered with epmd and booted, and notes its VM's pid.
    fn await_boot(&mut self, i: usize) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // `rabbitmqctl await_startup` fails at once while the node is not in epmd yet, and each
        // try costs a second of CPU: first watch epmd, which is cheap.
        let registered = format!("name {} at port", self.nodes[i].short);
        self.poll(i, deadline, Duration::from_millis(200), "starting", |_| {
            if epmd_names().is_some_and(|names| names.lines().any(|l| l.starts_with(&registered))) {
                Ok(())
            } else {
                Err(format!("did not register with epmd in {BOOT_TIMEOUT:?}"))
            }
        });
        self.poll(i, deadline, Duration::from_millis(500), "starting", |c| {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs().max(5).to_string();
            match c.try_ctl(i, &["-q", "await_startup", "-t", &left]) {
                (true, _, _) => Ok(()),
                (false, stdout, stderr) => Err(format!("did not boot in {BOOT_TIMEOUT:?}: {stdout}{stderr}")),
            }
        });
        let wrapper = self.nodes[i].wrapper.as_ref().map(|c| c.id()).expect("node script");
        match beam_of(wrapper) {
            Some(pid) => self.nodes[i].beam = Some(pid),
            None => self.fail(i, "runs, but its Erlang VM is not a child of its rabbitmq-server script"),
        }
    }

    /// Waits until node `i` reports every running node of the cluster as running.
    fn await_clustered(&mut self, i: usize) {
        let want: Vec<String> = self.nodes.iter().filter(|n| n.wrapper.is_some()).map(|n| n.name.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        self.poll(i, deadline, Duration::from_millis(500), "joining the cluster", |c| {
            let (ok, stdout, stderr) = c.try_ctl(i, &["cluster_status", "--formatter", "json"]);
            let running: Vec<String> = serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| Some(v.get("running_nodes")?.as_array()?.iter().filter_map(|n| Some(n.as_str()?.to_string())).collect()))
                .unwrap_or_default();
            if ok && want.iter().all(|n| running.contains(n)) {
                Ok(())
            } else {
                Err(format!("does not see all of {want:?} running (cluster_status: {stdout}{stderr})"))
            }
        });
    }

    /// SIGKILLs node `i`'s VM (and its script, if it lingers) and waits until both are gone;
    /// never panics (also used when dropped).
    fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(mut wrapper) = node.wrapper.take() else { return };
        let beam = node.beam.take().or_else(|| beam_of(wrapper.id()));
        if let Some(pid) = beam {
            sigkill(pid);
        }
        // The script waits for the VM (reaping it) and exits; if the VM never started, or the
        // script lingers, it is killed too.
        let until = Instant::now() + Duration::from_secs(10);
        while matches!(wrapper.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(wrapper.try_wait(), Ok(None)) {
            if let Some(pid) = beam_of(wrapper.id()) {
                sigkill(pid);
            }
            let _ = wrapper.kill();
        }
        let _ = wrapper.wait();
        if let Some(pid) = beam {
            let until = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
        // When a test fails, its nodes' logs stay for inspection (the next cluster started after
        // this process ended removes them).
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
