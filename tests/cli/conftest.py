import os
import signal
import sys

import pytest


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Runs the command line's own entry point (`cli.main`) in this process, as `gvmgen ARGS` would:
    returns (exit status, stdout, stderr). Far cheaper than a new process for the errors that stop a
    command before any work; the environment, options and signal handlers it changes are put back."""
    import cli

    def run(*args, cwd=None):
        saved_env, saved_options = dict(os.environ), dict(cli.OPTIONS)
        saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
        monkeypatch.setattr(sys, "argv", ["gvmgen", *map(str, args)])
        if cwd is not None:
            monkeypatch.chdir(cwd)
        try:
            cli.main()
            code = 0
        except SystemExit as exit:
            code = exit.code
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            cli.OPTIONS.clear()
            cli.OPTIONS.update(saved_options)
            for signum, handler in saved_handlers.items():
                signal.signal(signum, handler)
        out, err = capsys.readouterr()
        return code, out, err
    return run
