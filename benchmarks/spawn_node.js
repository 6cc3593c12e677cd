// spawn + wait of /bin/true with Node's child_process.spawn: N children, K in flight.
//   node spawn_node.js N K      prints the seconds taken and the process's own CPU seconds
'use strict';
const { spawn } = require('child_process');

const n = Number(process.argv[2] || 2000);
const k = Number(process.argv[3] || 1);
let left = n;
let running = 0;
const t0 = process.hrtime.bigint();
const cpu0 = process.cpuUsage();

function next() {
  if (left === 0) {
    if (running === 0) {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      console.log(s.toFixed(6), ((cpu.user + cpu.system) / 1e6).toFixed(6));
    }
    return;
  }
  --left;
  ++running;
  const c = spawn('/bin/true', [], { stdio: 'inherit' });
  c.on('exit', (code) => {
    if (code !== 0) console.error('child failed', code);
    --running;
    next();
  });
}

for (let i = 0; i < k; ++i) next();
