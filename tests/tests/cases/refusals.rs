//! A hand-written client provokes every refusal: unknown worker id, protocol mismatch, a report
//! for a step not handed out to it, wrong tensor sizes, NaN, an oversize message, a report for a
//! view that is over, and a late duplicate for a committed step. Each gets a status that says
//! why, and the job still ends exactly where the reference does. The client speaks the protocol
//! as any gRPC stack generated from `coordinator.proto` would: it follows its directives, keeps a
//! replica, and reports what it computed.

use std::time::Duration;

use carry_it::{JOB, Proc, TempDir, max_diff, params, reference};
use model::engine::cpu::CpuEngine;
use model::params::ParamLayout;
use model::replica::{Computed, Record, Reduced, Replica, StepRecord, View, owned_chunks};
use proto::convert::{Work, model_config, tensor, work};
use proto::pb::{self, coordinator_client::CoordinatorClient};
use proto::step::{DirectiveOut, directive_in, follow_request, report_request, view_in};
use tonic::Code;

type Client = CoordinatorClient<tonic::transport::Channel>;
type Directives = tonic::Streaming<pb::Directive>;

/// The next directive that is not a keepalive.
async fn next(d: &mut Directives) -> DirectiveOut {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), d.message())
            .await
            .expect("a directive in time")
            .expect("the stream")
            .expect("not closed");
        match directive_in(m).unwrap() {
            DirectiveOut::Wait(_) => continue,
            other => return other,
        }
    }
}

/// Reads directives until a view and the work of its first step.
async fn view_and_work(d: &mut Directives, cfg: &model::ModelConfig) -> (View, Work) {
    let view = loop {
        if let DirectiveOut::View(v) = next(d).await {
            break view_in(&v, cfg).unwrap();
        }
    };
    loop {
        if let DirectiveOut::Work(a) = next(d).await {
            let w = work(&a, cfg).unwrap();
            if w.step() == view.start_step {
                return (view, w);
            }
        }
    }
}

/// What a worker reports for the first step of `view`: computed from its state, summed alone.
fn compute(view: &View, mut w: Work, cfg: &model::ModelConfig) -> (Vec<StepRecord>, Vec<f32>) {
    let state = view.state.clone().expect("the first view sends the state");
    w.data.init = view.states.clone();
    let out = w
        .data
        .compute(&mut CpuEngine::new(cfg, 1), cfg, &state.params)
        .unwrap();
    let mut replica = Replica { ..state };
    let d = replica
        .apply(
            &view.update,
            cfg,
            &ParamLayout::new(cfg),
            w.step(),
            w.lr,
            w.outputs,
            &out.grad,
        )
        .unwrap();
    let n = out.grad.len();
    let chunks = owned_chunks(view.chunks, 1, 0)
        .map(|k| out.grad[model::replica::chunk_range(n, view.chunks, k)].to_vec())
        .collect();
    let step = w.step();
    (
        vec![
            StepRecord {
                step,
                record: Record::Computed(Computed {
                    loss_sum: out.loss_sum,
                    finals: out.final_state,
                    grad_norm: model::trainer::l2_norm(&out.grad),
                    compute_ms: 1.0,
                }),
            },
            StepRecord {
                step,
                record: Record::Reduced(Reduced {
                    chunks,
                    digest: d,
                    ..Default::default()
                }),
            },
        ],
        out.grad,
    )
}

async fn report(
    c: &mut Client,
    id: &str,
    view: u64,
    r: &[StepRecord],
) -> Result<(), tonic::Status> {
    c.report(report_request(id, view, r)).await.map(|_| ())
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
        "--pipeline-depth",
        "4",
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
                peer_address: "127.0.0.1:9".into(),
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
        // a registration without a usable peer address
        let e = c
            .register(pb::RegisterRequest {
                name: "nowhere".into(),
                device: "cpu".into(),
                protocol: proto::PROTOCOL_VERSION,
                peer_address: "not an address".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("peer_address"), "{}", e.message());
        let reg = c
            .register(pb::RegisterRequest {
                name: "prober".into(),
                device: "cpu".into(),
                protocol: proto::PROTOCOL_VERSION,
                peer_address: "127.0.0.1:9".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let cfg = model_config(reg.model.as_ref()).unwrap();
        let id = reg.worker_id;
        let mut d = c.follow(follow_request(&id)).await.unwrap().into_inner();
        let (view, w) = view_and_work(&mut d, &cfg).await;
        assert_eq!(
            (w.step(), w.data.slots.len(), view.members.len()),
            (0, 10, 1),
            "the only worker gets the whole first step"
        );
        let (good, grad) = compute(&view, w, &cfg);
        // a step that was never handed out
        let mut never = good[0].clone();
        never.step = 7;
        let e = report(&mut c, &id, view.id, &[never]).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("step 7 has not been assigned"),
            "{}",
            e.message()
        );
        // wrong gradient length
        let mut bad = good.clone();
        if let Record::Reduced(r) = &mut bad[1].record {
            r.chunks[0].truncate(3);
        }
        let e = report(&mut c, &id, view.id, &bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("grad") && e.message().contains("expected shape"),
            "{}",
            e.message()
        );
        // the refused step is computed again, in a new view; send NaN this time
        let (view2, w2) = view_and_work(&mut d, &cfg).await;
        assert!(view2.id > view.id && w2.step() == 0);
        let e = report(&mut c, &id, view.id, &good).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("is over"), "{}", e.message());
        let mut nan = report_request(&id, view2.id, &good);
        if let Some(pb::record::Kind::Reduced(r)) = nan.records[1].kind.as_mut() {
            let n = r.chunks[0].shape[0] as usize;
            let mut v = vec![0.5f32; n];
            v[3] = f32::NAN;
            r.chunks[0] = tensor(&[n], &v);
        }
        let e = c.report(nan).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("finite") && e.message().contains("index 3"),
            "{}",
            e.message()
        );
        // oversize: more than --max-message-mb 1
        let (view3, _) = view_and_work(&mut d, &cfg).await;
        let mut big = report_request(&id, view3.id, &good);
        if let Some(pb::record::Kind::Reduced(r)) = big.records[1].kind.as_mut() {
            r.chunks[0] = tensor(&[400_000], &vec![0.0; 400_000]);
        }
        let e = c.report(big).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{e:?}"
        );
        // finally correct records commit step 0 (the first results of a run wait for the
        // coordinator's own computation, which the gradient upload is compared with)
        report(&mut c, &id, view3.id, &good)
            .await
            .expect("correct records are accepted");
        loop {
            if let DirectiveOut::Upload(step) = next(&mut d).await {
                assert_eq!(step, 0);
                break;
            }
        }
        let upload = StepRecord {
            step: 0,
            record: Record::Gradient(grad),
        };
        report(&mut c, &id, view3.id, &[upload]).await.unwrap();
        // a late duplicate for the committed step
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let e = loop {
            let e = report(&mut c, &id, view3.id, &good[..1]).await.unwrap_err();
            if e.message().contains("already committed") || std::time::Instant::now() > deadline {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
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
