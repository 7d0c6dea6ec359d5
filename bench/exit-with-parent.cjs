/**
 * Preloaded into the benchmark's child processes (`node --import ./bench/exit-with-parent.cjs …`; plain JavaScript, so a bundle runs without tsx): when the parent's
 * end of our stdin closes, the parent is gone (even if it was killed with SIGKILL and could not stop us), so stop
 * the way an operator would, with SIGTERM, letting the server drain and flush before it exits.
 */
process.stdin.on('end', () => process.kill(process.pid, 'SIGTERM'));
process.stdin.on('error', () => process.kill(process.pid, 'SIGTERM'));
process.stdin.resume();
