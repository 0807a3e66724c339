//! A hand-written client provokes every refusal: unknown worker id, protocol mismatch, a result
//! for a step not assigned to it, wrong tensor sizes, NaN, an oversize message, and a late result
//! for a committed step. Each gets a status that says why, and the job still ends exactly where
//! the reference does.

use std::time::Duration;

use carry_it::{JOB, Proc, TempDir, max_diff, params, reference};
use model::engine::cpu::CpuEngine;
use proto::convert::{decode, model_config, shard_result, tensor, work};
use proto::pb::{self, coordinator_client::CoordinatorClient};
use tonic::Code;

type Client = CoordinatorClient<tonic::transport::Channel>;

async fn next_assignment(c: &mut Client, id: &str) -> pb::Assignment {
    for _ in 0..100 {
        let r = c
            .step(pb::StepRequest {
                worker_id: id.into(),
                result: None,
                failure: None,
            })
            .await
            .expect("step")
            .into_inner();
        match r.kind {
            Some(pb::step_reply::Kind::Assignment(a)) => return a,
            Some(pb::step_reply::Kind::Wait(_)) => continue,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
    panic!("no assignment");
}

/// Computes an assignment the way a worker does.
fn compute(a: &pb::Assignment, cfg: &model::config::ModelConfig) -> pb::ShardResult {
    let w = work(a, cfg).unwrap();
    let out = w
        .data
        .compute(&mut CpuEngine::new(cfg, 1), cfg, &w.params)
        .unwrap();
    shard_result(w.step, w.shard, &out, 1.0)
}

async fn submit(
    c: &mut Client,
    id: &str,
    r: pb::ShardResult,
) -> Result<pb::StepReply, tonic::Status> {
    c.step(pb::StepRequest {
        worker_id: id.into(),
        result: Some(r),
        failure: None,
    })
    .await
    .map(|r| r.into_inner())
}

#[test]
fn every_refusal_has_a_reason_and_the_job_still_finishes_correctly() {
    let dir = TempDir::new("refusals");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("run");
    let mut args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--out",
        out.to_str().unwrap(),
        "--max-message-mb",
        "1",
    ];
    args.extend_from_slice(JOB);
    let mut coord = Proc::coordinator("coordinator", &args, &[], dir.path());
    let url = format!("http://{}", coord.ready());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = CoordinatorClient::connect(url.clone()).await.unwrap();
        // protocol mismatch
        let e = c
            .register(pb::RegisterRequest {
                name: "old".into(),
                device: "cpu".into(),
                protocol: 999,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("protocol"), "{}", e.message());
        // unknown worker id
        let e = c
            .heartbeat(pb::HeartbeatRequest {
                worker_id: "w42-nothere".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("unknown worker id"), "{}", e.message());
        let reg = c
            .register(pb::RegisterRequest {
                name: "prober".into(),
                device: "cpu".into(),
                protocol: proto::PROTOCOL_VERSION,
            })
            .await
            .unwrap()
            .into_inner();
        let cfg = model_config(reg.model.as_ref()).unwrap();
        let id = reg.worker_id;
        let a = next_assignment(&mut c, &id).await;
        assert_eq!(
            (a.step, a.slots),
            (0, 10),
            "the only worker gets the whole first step"
        );
        let good = compute(&a, &cfg);
        // a step that was never assigned
        let e = submit(
            &mut c,
            &id,
            pb::ShardResult {
                step: 7,
                ..good.clone()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("step 7 has not been assigned"),
            "{}",
            e.message()
        );
        // wrong gradient length
        let mut bad = good.clone();
        bad.grad = Some(tensor(&[3], &[0.0; 3]));
        let e = submit(&mut c, &id, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("grad") && e.message().contains("expected shape"),
            "{}",
            e.message()
        );
        // the refused shard went back to the pool; take it again and send NaN
        let a2 = next_assignment(&mut c, &id).await;
        assert_eq!((a2.step, a2.shard), (0, 0));
        let mut nan = good.clone();
        let mut g = decode(
            good.grad.as_ref(),
            "g",
            &[good.grad.as_ref().unwrap().shape[0] as usize],
        )
        .unwrap();
        g[3] = f32::NAN;
        nan.grad = Some(tensor(&[g.len()], &g));
        let e = submit(&mut c, &id, nan).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("finite") && e.message().contains("index 3"),
            "{}",
            e.message()
        );
        // oversize: more than --max-message-mb 1
        let a3 = next_assignment(&mut c, &id).await;
        let mut big = good.clone();
        big.grad = Some(tensor(&[400_000], &vec![0.0; 400_000]));
        let e = submit(&mut c, &id, big).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{e:?}"
        );
        // finally a correct result commits step 0
        assert_eq!(a3.step, 0);
        let next = submit(&mut c, &id, good.clone())
            .await
            .expect("a correct result is accepted");
        assert!(
            matches!(next.kind, Some(pb::step_reply::Kind::Assignment(ref n)) if n.step == 1),
            "{next:?}"
        );
        // a late duplicate for the committed step
        let e = submit(&mut c, &id, good).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("already committed"), "{}", e.message());
        c.leave(pb::LeaveRequest { worker_id: id }).await.unwrap();
    });
    let _w = Proc::worker(
        "worker",
        &["--coordinator", &url, "--device", "cpu", "--threads", "1"],
        &[],
        dir.path(),
    );
    coord.success(Duration::from_secs(120));
    let d = max_diff(&params(&out), &want);
    coord.check(
        d <= 1e-4,
        &format!("max parameter difference {d} after the refusals"),
    );
    carry_it::assert_step_log(&carry_it::metrics(&out), 50);
    let log = coord.log();
    assert!(log.contains("refused"), "refusals are logged");
}
