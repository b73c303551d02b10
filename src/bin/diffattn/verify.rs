//! `diffattn verify`: the conformance suite on the chosen adapter.

use anyhow::Result;
use diffattn::GpuOptions;
use diffattn::testing::{conformance_cases_for, product_cases_for, run_case, run_product_case};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// One JSON object per case, then a summary object.
    #[arg(long)]
    json: bool,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

pub fn run(args: &VerifyArgs, opts: &GpuOptions) -> Result<()> {
    let gpu = super::open_gpu(opts)?;
    let adapter = gpu.describe();
    if !args.json {
        println!("adapter: {adapter}");
        println!(
            "{:<72} {:<12} {:>10} {:>10} {:>8}  result",
            "case", "path", "max abs", "rel L2", "tol"
        );
    }
    let cases: Vec<_> = conformance_cases_for(&gpu)
        .into_iter()
        .filter(|c| {
            args.filter
                .as_ref()
                .is_none_or(|f| c.name().contains(f.as_str()))
        })
        .collect();
    let products: Vec<_> = product_cases_for(&gpu)
        .into_iter()
        .filter(|c| {
            args.filter
                .as_ref()
                .is_none_or(|f| c.name().contains(f.as_str()) || c.kernel.contains(f.as_str()))
        })
        .collect();
    let (mut failed, mut max_rel) = (0usize, 0.0f64);
    let mut paths: Vec<String> = vec![];
    let attention = cases.iter().map(|c| pollster::block_on(run_case(&gpu, c)));
    let product = products
        .iter()
        .map(|c| pollster::block_on(run_product_case(&gpu, c)));
    for r in attention.chain(product) {
        let r = r?;
        if !paths.contains(&r.path) {
            paths.push(r.path.clone());
        }
        failed += !r.pass as usize;
        max_rel = max_rel.max(r.rel_l2);
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            let verdict = if r.pass { "pass" } else { "FAIL" };
            println!(
                "{:<72} {:<12} {:>10.3e} {:>10.3e} {:>8.0e}  {verdict}",
                r.case, r.path, r.max_abs, r.rel_l2, r.tolerance
            );
        }
    }
    let total = cases.len() + products.len();
    let summary = serde_json::json!({
        "cases": total,
        "failed": failed,
        "max_rel_l2": max_rel,
        "paths": paths,
        "adapter": adapter,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{total} cases, {failed} failed, max relative L2 {max_rel:.3e}; kernels: {}",
            paths.join(", ")
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
