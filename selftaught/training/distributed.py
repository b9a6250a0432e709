"""The end of a command launched on several processes (`accelerate launch`, torchrun): one teardown for all.

Why a finished run needs one. Over gloo, a worker thread of the process group frees a collective after
its caller has moved on: the last barrier holds the FSDP all-gathers it waited for, and freeing a tensor
that Python had dropped takes the GIL. If the interpreter has begun to shut down by then, CPython ends
that thread with pthread_exit, whose unwinding through a C++ destructor calls std::terminate: the process
aborts ("terminate called without an active exception", exit -6) after the model was written.

A barrier and `destroy_process_group` do not prevent it: under FSDP 2 the destroyed group and its threads
live on (torch's DTensor caches keep it), and each barrier carries the work before it to its own worker
thread. So a launched process ends without interpreter finalization, once what finalization would run
for it has run, as multiprocessing ends its worker processes.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import torch.distributed as dist


@contextmanager
def process_group_teardown() -> Iterator[None]:
    """Around a whole command. If it ran in a process group: on success every process meets at a barrier
    (all saves done), destroys the group (which also shuts NCCL down) and exits 0; on failure it destroys
    the group and exits as the error would have. A no-op for a single process, even one where a library
    made a group of its own (vLLM's colocated engine makes a one-process group): only a launcher's
    WORLD_SIZE above 1, read before the command runs, makes it end the process (a caller of `main` in
    Python, a test runner say, must get control back)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        yield
    except BaseException as error:
        if not (launched and dist.is_initialized()):
            raise
        dist.destroy_process_group()
        exit_before_finalization(reported_exit_code(error))
    if launched and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        exit_before_finalization(0)


def reported_exit_code(error: BaseException) -> int:
    """What the interpreter prints for `error` left uncaught, printed; the exit code it would give."""
    if isinstance(error, SystemExit):
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        print(error.code, file=sys.stderr)
        return 1
    sys.excepthook(type(error), error, error.__traceback__)
    return 128 + signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1


def exit_before_finalization(code: int) -> NoReturn:
    """End the process without interpreter finalization, so that no thread of torch can take the GIL
    during it. The atexit functions (logging, file locks, temporary folders, trackers) run first, while
    those threads can still take the GIL; CPython has no public API that runs them."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
