//! Loading the programs, and choosing the delay backend by trying what the kernel has.

use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier},
};
use chaos_common::{PROG_EGRESS_EDT, PROG_IFB_EDT};
use serde::{Deserialize, Serialize};

use super::{
    KernelError, attach,
    pins::Pins,
    profile::{Feature, KernelProfile},
};
use crate::shaping::{Backend, Probe};

/// Which delay backend to use: `auto` picks edt where the kernel has it, else netem; the others
/// force one (`netem` is how 4.19 kernels are tested on newer ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Edt,
    Netem,
}

/// Loads and pins one program; the verifier's log is in the error.
pub(super) fn load_program(ebpf: &mut Ebpf, pins: &Pins, name: &'static str) -> Result<(), KernelError> {
    let prog: &mut SchedClassifier = attach::program(ebpf, name)?;
    prog.load().map_err(|e| verifier_error(name, e))?;
    // A previous daemon's program stays pinned until replaced: the kernel frees it once its
    // links have moved to ours.
    let path = pins.program(name);
    let _ = std::fs::remove_file(&path);
    prog.pin(&path).map_err(|e| KernelError::Pins(format!("pinning {}: {e}", path.display())))
}

/// A program the kernel refused, with the verifier's log, and a hint when the refusal is a
/// matter of capabilities.
pub(super) fn verifier_error(name: &'static str, e: ProgramError) -> KernelError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let mut log = verifier_log.to_string();
            // Refused before the verifier ran (an empty log), or for checks only the
            // unprivileged face ("prohibited for !root": Spectre mitigations CAP_PERFMON lifts):
            // a matter of capabilities.
            let denied = matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            if denied && (log.trim().is_empty() || log.contains("!root")) {
                log += "\n(refused for lack of privilege: the daemon needs CAP_BPF, CAP_PERFMON and \
                        CAP_NET_ADMIN, or CAP_SYS_ADMIN on kernels before 5.8)";
            }
            KernelError::Verifier { program: name, source: io_error, log }
        }
        e => KernelError::Program { what: format!("loading {name}"), source: e },
    }
}

/// The delay backend: found by trying (the qdiscs in a scratch namespace, the edt programs by
/// loading them), never by kernel version, within what `profile` lets the daemon use.
/// `previous` (a backend whose qdiscs are still in place) wins over the config. Also returns
/// whether edt can run here, where it was tried.
pub(super) fn select_backend(
    ebpf: &mut Ebpf,
    pins: &Pins,
    choice: BackendChoice,
    previous: Option<Backend>,
    probe: &Probe,
    profile: KernelProfile,
) -> (Result<Backend, String>, Result<(), String>) {
    let mut edt_tried = None;
    let mut edt = || -> Result<Backend, String> {
        let found = (|| {
            profile.allows(Feature::Edt).map_err(|why| format!("no edt: {why}"))?;
            probe.fq.clone().map_err(|e| format!("edt needs the fq qdisc: {e}"))?;
            for name in [PROG_EGRESS_EDT, PROG_IFB_EDT] {
                load_program(ebpf, pins, name).map_err(|e| {
                    format!(
                        "edt needs TC programs that may write skb->tstamp (Linux 5.0+), which this kernel refuses: {e}"
                    )
                })?;
            }
            Ok(())
        })();
        edt_tried = Some(found.clone());
        found.map(|()| Backend::Edt)
    };
    let netem = || netem_ability(probe).map(|()| Backend::Netem);
    let forced = |r: Result<Backend, String>, name| r.map_err(|e| format!("{e} (delay_backend = \"{name}\")"));
    let backend = match previous {
        Some(Backend::Edt) => forced(edt(), "edt, kept from the previous daemon"),
        Some(Backend::Netem) => forced(netem(), "netem, kept from the previous daemon"),
        None => match choice {
            BackendChoice::Edt => forced(edt(), "edt"),
            BackendChoice::Netem => forced(netem(), "netem"),
            BackendChoice::Auto => {
                edt().or_else(|e1| netem().map_err(|e2| format!("this kernel has no delay backend: {e1}; {e2}")))
            }
        },
    };
    let edt = edt_tried.unwrap_or_else(|| Err("not tried: delay_backend = \"netem\"".into()));
    (backend, edt)
}

/// Whether the netem backend can run here.
pub(super) fn netem_ability(probe: &Probe) -> Result<(), String> {
    probe.netem.clone().map_err(|e| format!("netem needs the netem qdisc: {e}"))?;
    probe.htb.clone().map_err(|e| format!("netem needs the htb qdisc: {e}"))
}
