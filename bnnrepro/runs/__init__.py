"""Run records, the one owner of the run directory: its file names, the :class:`Run` type,
discovery (folders, sweeps, ``runs.txt``), the atomic write, checkpoints files and provenance.

Everything else reads and writes runs through this package. It sits at the bottom of the house
with ``quant``, ``data`` and ``errors``: it imports nothing above them.
"""
from .checkpoints import load as load_checkpoint, load_resumable, resolve as resolve_checkpoint, save as \
    save_checkpoint, save_last
from .curves import draw_curves
from .directory import RUNS_ENV, check_writable, create, default_name, runs_root
from .files import (BEST, CONFIG, CURVES, LAST, MARKERS, METRICS, PREVIOUS, RUNS_LIST, SUMMARY,
                    append_line, atomic_write_bytes, commit_file, storage_error, atomic_write_json, atomic_write_text, read_jsonl)
from .lock import LOCK, RunLock, acquire as lock_run, holder as lock_holder
from .provenance import code_label, code_version, environment, invocation
from .record import (Problem, Run, Scan, discover, export, is_run_dir, load_config_text, read_config, read_list, read_run,
                     read_summary, record_in_sweep, scan)
from .frame import (COLUMNS, STATUSES, check_keys, epochs_frame, format_duration, frame, group_label, group_lines,
                    groups, label_keys, run_dirs, sweep_keys)
