//! `./x test` and `./x vmtest`: the test runs (this host's kernel, then the kernel matrix under
//! qemu, see vm.rs) and their totals, read from cargo's `test result:` lines.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, dist, root, say, vm};

/// Test totals read from `test result:` lines.
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub success: bool,
}

/// Runs `cmd` (stdout piped), echoing its output, and adds up cargo's test result lines.
pub fn tee_totals(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let errs = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        })
    });
    let (mut passed, mut failed) = (0u64, 0u64);
    let out = child.stdout.take().context("child stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 8 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                match (w.next().and_then(|n| n.parse::<u64>().ok()), w.next()) {
                    (Some(n), Some("passed")) => passed += n,
                    (Some(n), Some("failed")) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let success = child.wait()?.success();
    if let Some(t) = errs {
        let _ = t.join();
    }
    Ok(Totals {
        passed,
        failed,
        success,
    })
}

/// Runs the tests on this host's kernel, then (unless `host_only`) in each kernel of the matrix,
/// and ends with one `passed, failed` total line.
pub fn test(args: &[String], host_only: bool) -> Result<()> {
    let host = tee_totals(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "rst-trace-ebpf",
                // Every test binary runs, so one failing binary cannot hide the others'.
                "--no-fail-fast",
            ])
            .args(args)
            .env("RST_TRACE_BIN", root().join("target/release/rst-trace"))
            .stdout(std::process::Stdio::piped()),
    )?;
    let (mut passed, mut failed) = (host.passed, host.failed);
    let mut bad = !host.success;
    if !host_only {
        let filter: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        let outcomes = vmtest(&[], &filter)?;
        for o in &outcomes {
            passed += o.passed;
            failed += o.failed;
            bad |= o.failed > 0;
        }
    }
    println!("xtask: {passed} passed, {failed} failed");
    if bad {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The end-to-end suite in each kernel of `kernels` (all when empty), with the static binary
/// `./x dist` builds for the guest's architecture (dist/rst-trace, dist/rst-trace-aarch64), so
/// that it is the one checked on every kernel. Prints a table at the end.
fn vmtest(kernels: &[String], filter: &[String]) -> Result<Vec<vm::Outcome>> {
    let series = vm::select(kernels)?;
    vm::setup_tools()?;
    let kvers = series
        .iter()
        .map(|s| vm::kernel(s))
        .collect::<Result<Vec<_>>>()?;
    vm::preflight()?;
    dist::dist()?;
    let arm64: Vec<&str> = series
        .iter()
        .zip(&kvers)
        .filter(|(s, _)| s.arm64)
        .map(|(_, k)| k.as_str())
        .collect();
    let arm64_root = if arm64.is_empty() {
        None
    } else {
        Some(vm::arm64_root(&arm64)?)
    };
    let exes = vm::e2e_executables(None)?;
    let exes_arm64 = match arm64_root {
        Some(_) => vm::e2e_executables(Some(vm::ARM64_TARGET))?,
        None => Vec::new(),
    };
    for (t, why) in vm::GUEST_SKIPS {
        say(&format!("in the guests, not run: {t} ({why})"));
    }
    for (f, why) in vm::GUEST_SKIP_FILES {
        say(&format!("in the guests, not run: the {f} tests ({why})"));
    }
    let mut outcomes = Vec::new();
    for (s, kver) in series.iter().zip(&kvers) {
        let (bin, exes, r) = if s.arm64 {
            (dist::AARCH64_BIN, &exes_arm64, arm64_root.as_deref())
        } else {
            (dist::X86_64_BIN, &exes, None)
        };
        let run = series_executables(s, kver, exes);
        // A filter may match nothing a kernel runs (5.4 runs only the start-up tests): that
        // kernel is not booted, rather than counted as a guest that ran no test.
        if !filter.is_empty() && matching_tests(&run, filter)? == 0 {
            say(&format!(
                "{kver}: no test it runs matches the filter: not booted"
            ));
            continue;
        }
        say(&format!("booting {kver}"));
        let bin = root().join(bin);
        outcomes.push(vm::run_guest(kver, r, &bin, &run, filter)?);
    }
    say("kernel matrix:");
    for o in &outcomes {
        say(&format!(
            "  {:32} {:3} passed, {:2} failed, {:5.0} s",
            o.kernel,
            o.passed,
            o.failed,
            o.wall.as_secs_f64()
        ));
    }
    Ok(outcomes)
}

/// The executables of `exes` that series `s` runs, saying which it does not and why.
fn series_executables(s: &vm::Series, kver: &str, exes: &[(String, PathBuf)]) -> Vec<PathBuf> {
    let mut run = Vec::new();
    for (name, exe) in exes {
        match s.not_run(name) {
            Some(why) => say(&format!(
                "in {} ({kver}), not run: the {name} tests ({why})",
                s.name
            )),
            None => run.push(exe.clone()),
        }
    }
    if let vm::TestFiles::Only(files, _) = s.files {
        for f in files.iter().filter(|f| !exes.iter().any(|(n, _)| n == *f)) {
            say(&format!(
                "in {} ({kver}): no {f} tests were built to run",
                s.name
            ));
        }
    }
    run
}

/// `./x vmtest`: the kernel matrix alone, ending with its `passed, failed` total line.
/// How many tests of `exes` match `filter`, from their own `--list`.
fn matching_tests(exes: &[PathBuf], filter: &[String]) -> Result<usize> {
    let mut n = 0;
    for exe in exes {
        let out = Command::new(exe)
            .args(["--list", "--format", "terse"])
            .args(filter)
            .output()
            .with_context(|| format!("{} --list", exe.display()))?;
        if !out.status.success() {
            bail!("{} --list failed", exe.display());
        }
        n += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with(": test"))
            .count();
    }
    Ok(n)
}

pub fn vmtest_command(kernels: &[String], filter: &[String]) -> Result<()> {
    let outcomes = vmtest(kernels, filter)?;
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
    println!("xtask: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("tests failed in the kernel matrix");
    }
    Ok(())
}
