//! 1, 2 and 3 workers end where the in-process reference trainer ends.

use std::time::Duration;

use carry_it::{JOB, Proc, TempDir, max_diff, metrics, params, reference};

#[test]
fn one_two_and_three_workers_match_the_reference_and_export_agrees() {
    let dir = TempDir::new("equivalence");
    let want = reference(&dir, "ref", &[]);
    let ref_export = dir.join("ref.safetensors");
    let mut e = Proc::coordinator(
        "export-ref",
        &[
            "export",
            "--model",
            dir.join("ref").to_str().unwrap(),
            "--out",
            ref_export.to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    e.success(Duration::from_secs(30));
    let ref_weights = model::export::load_model(&ref_export, None).unwrap().params;
    assert_eq!(ref_weights, want, "export is lossless");
    for k in [1usize, 2, 3] {
        let out = dir.join(&format!("w{k}"));
        let ks = k.to_string();
        let mut args = vec![
            "train",
            "--listen",
            "127.0.0.1:0",
            "--spawn-workers",
            &ks,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(JOB);
        let mut c = Proc::coordinator(&format!("coordinator-{k}"), &args, &[], dir.path());
        c.ready();
        c.success(Duration::from_secs(120));
        let got = params(&out);
        let d = max_diff(&got, &want);
        c.check(
            d <= 1e-4,
            &format!("{k} workers: max parameter difference {d} > 1e-4"),
        );
        let rows = metrics(&out);
        carry_it::assert_step_log(&rows, 50);
        assert!(
            rows.iter().all(|r| r.shards.split(';').count() == k),
            "{k} shards per step: {:?}",
            rows[0].shards
        );
        let f = dir.join(&format!("w{k}.safetensors"));
        let mut e = Proc::coordinator(
            &format!("export-{k}"),
            &[
                "export",
                "--model",
                out.to_str().unwrap(),
                "--out",
                f.to_str().unwrap(),
            ],
            &[],
            dir.path(),
        );
        e.success(Duration::from_secs(30));
        let w = model::export::load_model(&f, None).unwrap().params;
        assert!(max_diff(&w, &ref_weights) <= 1e-4, "exported weights agree");
    }
}
