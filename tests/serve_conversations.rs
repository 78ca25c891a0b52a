//! `serve` with `server.max_conversations` > 1: several websocket clients stepped together,
//! each answered exactly as it is answered alone; the client beyond the limit refused as
//! busy; a slot freed by a client that leaves taken by the next with a fresh state; and the
//! memory refusal at start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::network_daemon::*;
use common::*;
use flm_edge::remote::ogg_opus::PACKET_SAMPLES;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const F: usize = PACKET_SAMPLES;

#[test]
fn two_clients_at_once_are_each_answered_as_alone_the_third_is_busy_and_a_freed_slot_is_taken_afresh()
 {
    let d = Daemon::launch(
        "serve-two-conversations",
        "",
        "max_conversations = 2\n",
        Duration::from_secs(90),
    );
    let speech = speech();
    // Two different voices: A short, B long (B still talks when A has left).
    let clip_a = speech[..24 * F].to_vec();
    let clip_b = speech[24 * F..84 * F].to_vec();
    let url = d.url();
    let clients = std::panic::catch_unwind(|| {
        runtime().block_on(async {
            let b_and_more = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let c = async {
                    // Both slots taken: the third client is refused at once.
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    refused(&url).await
                };
                tokio::join!(converse(&url, &clip_b), c)
            };
            let a_then_again = async {
                let a = converse(&url, &clip_a).await;
                // A has left: its slot is free for the next client, which starts afresh while
                // B goes on.
                let again = converse(&url, &clip_a).await;
                (a, again)
            };
            let ((a, again), (b, busy)) = tokio::join!(a_then_again, b_and_more);
            (a, b, busy, again)
        })
    });
    let (a, b, busy, again) = match clients {
        Ok(r) => r,
        Err(e) => {
            // The daemon's side of the story, before it is killed.
            let mut d = d;
            signal(&d.child, SIGTERM);
            eprintln!("serve's log:\n{}", exit_of(&mut d.child).1);
            std::panic::resume_unwind(e)
        }
    };
    assert!(busy.contains("busy"), "{busy}");
    assert_eq!(a.pcm.len(), clip_a.len() - F);
    assert_eq!(b.pcm.len(), clip_b.len() - F);
    assert!(a.pcm.iter().any(|&x| x != 0.0), "A's reply is silent");
    // Each conversation's text is the offline run's on its own input, alone.
    assert_eq!(a.words(), offline_text(&d.dir, "a", &a.sent));
    assert_eq!(b.words(), offline_text(&d.dir, "b", &b.sent));
    // The client in A's freed slot, with A's input, gets exactly A's answer: a fresh state.
    assert_eq!(again.sent, a.sent);
    assert!(
        again.pcm == a.pcm,
        "the reply in the freed slot differs from A's"
    );
    assert_eq!(again.text, a.text);
    // B, alone now, once more: the same reply as it had beside A and A's successor.
    let alone = match std::panic::catch_unwind(|| runtime().block_on(converse(&url, &clip_b))) {
        Ok(r) => r,
        Err(e) => {
            let mut d = d;
            signal(&d.child, SIGTERM);
            eprintln!("serve's log:\n{}", exit_of(&mut d.child).1);
            std::panic::resume_unwind(e)
        }
    };
    assert!(
        alone.pcm == b.pcm,
        "B alone and B together answered differently"
    );
    assert_eq!(alone.text, b.text);
    assert!(
        a.pcm[..] != b.pcm[..a.pcm.len()],
        "A and B got the same answer"
    );
    assert_eq!(d.metric("conversations_total"), 4);
    assert_eq!(d.metric("conversations_refused_total"), 1);
    let err = d.stop();
    assert_eq!(
        err.matches("conversation with 127.0.0.1").count(),
        8,
        "{err}"
    );
}

#[test]
fn conversations_that_do_not_fit_the_memory_are_refused_at_start() {
    let dir = scratch("serve-memory-refusal");
    std::fs::create_dir_all(&*dir).unwrap();
    let cfg = dir.join("config.toml");
    let dirm = flm_edge::model_dir::ModelDir::open(model()).unwrap();
    let size = |f: &str| std::fs::metadata(dirm.path(f)).unwrap().len();
    let weights = size("backbone.gguf") + size("audio.gguf");
    let mimi = size("mimi.gguf");
    // Room for the weights and Mimi's streams for two conversations (about 70 MiB of states
    // and work buffers; this model's KV caches are small), not for four (about 130 MiB).
    let mib = (weights + mimi + (100 << 20)) >> 20;
    std::fs::write(
        &cfg,
        format!(
            "memory_mib = {mib}\n[status]\nmetrics = \"\"\nevents = \"\"\n[server]\nlisten = \"127.0.0.1:{}\"\nmax_conversations = 4\n",
            free_port()
        ),
    )
    .unwrap();
    let out = flm_edge(&["serve", "--config", s(&cfg), "--model", s(model())]);
    assert_one_line_error(
        &out,
        &[
            "key `server.max_conversations`",
            "4 conversations need",
            &format!("over the {mib} MiB of `memory_mib`"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("loaded"),
        "refused before the model loads: {stderr}"
    );
    // Fewer fit: the line says how many.
    let fits: u64 = stderr
        .split("; ")
        .last()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(fits < 4, "{stderr}");
}
