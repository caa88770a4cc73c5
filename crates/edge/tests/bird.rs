//! The edge's speaker drives a real BIRD 2 (`bird2`) through its control socket: BIRD takes
//! the configuration the edge writes (statics, export filter, BFD, a BGP session to a peer on
//! loopback that is not there), the routes come and go with announce and withdraw, and a
//! `birdc configure` keeps the state the edge chose. Without `bird`, skipped (failed with
//! MERIDIAN_TEST_STRICT=1).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use meridian_edge::anycast::bird::Bird;
use meridian_edge::anycast::speaker::{BirdSpeaker, Speaker};
use meridian_edge::anycast::{
    AnycastOptions, Bfd, BgpOptions, Community, HealthOptions, Peer, Prefix,
};

/// A BIRD in the foreground with its files in a directory; killed on drop.
struct RunningBird {
    child: Child,
    socket: std::path::PathBuf,
}

impl Drop for RunningBird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bird_available() -> bool {
    let found = Command::new("bird").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("MERIDIAN_TEST_STRICT").as_deref() != Ok("1"),
            "bird (Debian's bird2) is needed (MERIDIAN_TEST_STRICT=1)"
        );
        eprintln!("skipped: bird (Debian's bird2) is not installed");
    }
    found
}

/// Starts BIRD with a configuration that includes the edge's files in `dir/edge`.
fn start_bird(dir: &Path) -> RunningBird {
    let config = dir.join("bird.conf");
    std::fs::create_dir_all(dir.join("edge")).unwrap();
    std::fs::write(
        &config,
        format!(
            "router id 192.0.2.1;\nprotocol device {{ }}\ninclude \"{}/edge/*.conf\";\n",
            dir.display()
        ),
    )
    .unwrap();
    let socket = dir.join("bird.ctl");
    let child = Command::new("bird")
        .arg("-f")
        .arg("-c")
        .arg(&config)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < end, "BIRD made no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    RunningBird { child, socket }
}

fn options(dir: &Path, socket: &Path) -> AnycastOptions {
    AnycastOptions {
        prefixes: vec![
            Prefix::parse("198.18.0.10/32").unwrap(),
            Prefix::parse("2001:db8::10/128").unwrap(),
        ],
        interface: "lo".into(),
        bgp: BgpOptions {
            socket: socket.to_owned(),
            dir: dir.join("edge"),
            name: "meridian".into(),
            local_as: 65001,
            // Nobody listens there: the session stays down, which is all this test needs.
            peers: vec![Peer::parse("address=127.0.0.2,as=65000,source=127.0.0.1").unwrap()],
            communities: vec![
                Community::parse("65000:100").unwrap(),
                Community::parse("65000:1:2").unwrap(),
            ],
            hold_time: Duration::from_secs(9),
            bfd: Some(Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
        },
        health: HealthOptions {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(300),
            fall: 2,
            hold_down: Duration::from_secs(1),
            hold_down_max: Duration::from_secs(10),
            max_stale: Duration::from_secs(60),
            guard_timeout: Duration::from_secs(1),
        },
    }
}

/// The routes in BIRD's tables.
async fn routes(bird: &Bird) -> String {
    let reply = bird.command("show route").await.unwrap();
    reply.0.iter().map(|(_, l)| format!("{l}\n")).collect()
}

#[tokio::test]
async fn the_speaker_announces_and_withdraws_through_birds_control_socket() {
    if !bird_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bird = start_bird(dir.path());
    let options = options(dir.path(), &bird.socket);
    let mut speaker = BirdSpeaker::install(&options, "par").await.unwrap();
    let client = Bird::new(&bird.socket, Duration::from_secs(5));
    let state = speaker.state().await.unwrap();
    assert!(
        !state.announced && state.established == 0 && state.sessions == 1,
        "{state:?}"
    );
    assert!(!routes(&client).await.contains("198.18.0.10/32"));
    speaker.set(true).await.unwrap();
    assert!(speaker.state().await.unwrap().announced);
    let table = routes(&client).await;
    assert!(
        table.contains("198.18.0.10/32") && table.contains("2001:db8::10/128"),
        "{table}"
    );
    // The operator has BIRD read its configuration again: still announced.
    client.command("configure").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(speaker.state().await.unwrap().announced);
    speaker.set(false).await.unwrap();
    assert!(!speaker.state().await.unwrap().announced);
    client.command("configure").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!speaker.state().await.unwrap().announced);
    assert!(!routes(&client).await.contains("198.18.0.10/32"));
}

#[tokio::test]
async fn a_bird_whose_configuration_lacks_the_include_is_refused_with_the_reason() {
    if !bird_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bird = start_bird(dir.path());
    let mut options = options(dir.path(), &bird.socket);
    options.bgp.dir = dir.path().join("elsewhere");
    let error = BirdSpeaker::install(&options, "par")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("BIRD has no protocol meridian_anycast4")
            && error.contains("elsewhere/anycast.conf"),
        "{error}"
    );
}
