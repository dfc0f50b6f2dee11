//! Beyond one broker and one Redis: the whole fleet against a real 3-master Redis Cluster
//! started on loopback ports, against an AMQP URL list whose first node is dead, and against a
//! real three-node RabbitMQ cluster whose job-queue leader is killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genq_shared::{JobResult, JobStatus};
use genq_tests::rabbit_cluster::RabbitCluster;
use genq_tests::redis_server::free_port;
use genq_tests::tally::{jobs, publish, publish_through_nacks, tally, until_done};
use genq_tests::{amqp_url, scratch_dir, Sandbox, Worker};

/// Three `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`.
struct RedisCluster {
    ports: Vec<u16>,
    dir: std::path::PathBuf,
    children: Vec<std::process::Child>,
}

impl RedisCluster {
    fn start() -> Self {
        let dir = scratch_dir().join(genq_tests::unique("cluster"));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let node = dir.join(port.to_string());
            std::fs::create_dir_all(&node).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--save", ""])
                .args(["--appendonly", "no", "--cluster-node-timeout", "5000"])
                .current_dir(&node)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            children.push(child);
        }
        let cluster = RedisCluster { ports, dir, children };
        for port in &cluster.ports {
            let until = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < until, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let info = Command::new("redis-cli").args(["-p", &cluster.ports[0].to_string(), "cluster", "info"]).output().expect("redis-cli");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < until, "cluster never became ok");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    /// Every node, comma-separated: genq's Redis Cluster form of `redis.url`.
    fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_on_a_redis_cluster_and_a_node_list_with_a_dead_first_node() {
    let cluster = RedisCluster::start();
    let dead_first = format!("amqp://guest:guest@127.0.0.1:{}/%2f,{}", free_port(), amqp_url());
    let sb = Sandbox::new("cluster").with_redis(&cluster.urls()).with_amqp(&dead_first);
    let worker = sb.worker(&["--engine", "echo"]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(worker.log_text().contains("trying the next one"), "the dead node was tried first");

    let lines: String = (0..300).map(|i| format!("{{\"id\":\"c-{i}\",\"prompt\":\"w{i} x y\",\"max_new_tokens\":3,\"batch\":\"cb\"}}\n")).collect();
    let file = scratch_dir().join(format!("{}.jsonl", sb.model));
    std::fs::write(&file, lines).expect("jobs file");
    let out = sb.genq().arg("submit").arg(&file).args(["--wait", "--timeout", "120"]).output().expect("genq submit");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), worker.log_text());
    let results: Vec<JobResult> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(results.len(), 300);
    assert!(results.iter().all(|r| r.status == Some(JobStatus::Done)), "every job done through the cluster");

    // The job keys spread over the three masters; the batch counted each job once.
    let mut keys_per_node = Vec::new();
    for port in &cluster.ports {
        let out = Command::new("redis-cli").args(["-p", &port.to_string(), "dbsize"]).output().expect("redis-cli");
        keys_per_node.push(String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0));
    }
    assert!(keys_per_node.iter().all(|&n| n > 0), "keys on every master: {keys_per_node:?}");
    let status = sb.genq().args(["status", "--batch", "cb"]).output().expect("genq status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("done 300"), "batch counts: {text}{}", String::from_utf8_lossy(&status.stderr));

    // Cancel and wait work through the cluster too.
    let out = sb.genq().args(["cancel", "c-0"]).output().expect("genq cancel");
    assert_eq!(out.status.code(), Some(3), "already finished: {}", String::from_utf8_lossy(&out.stderr));
    let out = sb.genq().args(["wait", "c-7"]).output().expect("genq wait");
    assert!(out.status.success());

    // Queued marks through the cluster: a new job is marked, a finished one is left alone.
    let client = sb.results().await;
    client.mark_queued(&[("c-marked".into(), "m".into()), ("c-0".into(), "m".into())]).await.expect("queued marks on a cluster");
    let marked = client.get("c-marked").await.expect("get").expect("the mark is stored");
    assert_eq!((marked.status, marked.model.as_deref()), (Some(JobStatus::Queued), Some("m")));
    assert!(marked.created_ms.is_some(), "{marked:?}");
    let finished = client.get("c-0").await.expect("get").expect("c-0 is stored");
    assert_eq!(finished.status, Some(JobStatus::Done), "a mark leaves a final status alone");
    client.forget_many(&["c-marked".to_string()]).await.expect("cleanup");
    drop(worker);
    sb.cleanup().await;
}

/// A real three-node RabbitMQ cluster (quorum queues replicated on all three): the node leading
/// the job queue is killed with SIGKILL while jobs are published and consumed, then brought
/// back. Publishers and workers are given all three URLs, each in a different order.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_job_queue_leader_of_a_rabbitmq_cluster_loses_no_job() {
    let mut cluster = RabbitCluster::start();
    let urls = cluster.amqp_urls();
    let rotated = |k: usize| (0..urls.len()).map(|i| urls[(i + k) % urls.len()].clone()).collect::<Vec<_>>().join(",");
    let sb = Sandbox::new("mqcluster").with_amqp(&rotated(0));
    let mut ids = publish(&sb, jobs("c", 1000, 10)).await;
    let queue = genq_shared::topology::queue_name(&sb.model, genq_shared::Priority::Normal);
    let members = cluster.ctl(0, &["list_queues", "name", "members", "--quiet", "--no-table-headers"]);
    let line = members.lines().find(|l| l.starts_with(queue.as_str())).unwrap_or_default().to_string();
    assert_eq!(line.matches('@').count(), 3, "the job queue is replicated on all three nodes: {members}");
    let leader = cluster.leader_of(&queue);
    let workers: Vec<Worker> = (1..=2)
        .map(|k| {
            let w = Sandbox { amqp: rotated(k), ..sb.clone() }.worker_with_env(&["--engine", "echo", "--max-batch-size", "32", "--prefetch", "64"], &[("GENQ_ECHO_STEP_MS", "3")]);
            w.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
            w
        })
        .collect();
    // Publish more while the leader dies and comes back: the producer reconnects to another node.
    let publisher = {
        let sb = Sandbox { amqp: rotated(leader), ..sb.clone() };
        tokio::spawn(async move {
            let (mut ids, mut nacks) = (Vec::new(), 0);
            for round in 0..20 {
                let producer = sb.producer().await;
                let (confirmed, nacked) = publish_through_nacks(&producer, jobs(&format!("p{round}"), 100, 10)).await;
                producer.close().await;
                ids.extend(confirmed);
                nacks += nacked;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (ids, nacks)
        })
    };
    until_done(&sb, &ids, 200).await;
    tokio::task::block_in_place(|| {
        cluster.kill(leader);
        std::thread::sleep(Duration::from_secs(3));
        cluster.restart(leader);
    });
    let (more, nacks) = publisher.await.expect("publisher task");
    ids.extend(more);
    let t = tally(&sb, &ids, Duration::from_secs(180)).await;
    t.print(&format!("kill -9 the job queue's leader (node {leader} of 3; {nacks} publishes nacked during the failover, published again)"));
    assert_eq!(t.confirmed, 3000, "every publish is confirmed across the failover: {t:?}");
    let logs: Vec<String> = workers.iter().map(|w| w.log_text()).collect();
    assert_eq!((t.lost, t.done), (0, 3000), "{t:?}\n{}", logs.join("\n---\n"));
    drop(workers);
}
