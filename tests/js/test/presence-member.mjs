// A presence member in its own process, for tests that kill it (SIGKILL) so that
// its connection vanishes without a CLOSE. Reads {options, channel, clientId} from
// the MEMBER environment variable, enters, and stays until killed.

import Ably from 'ably';

const { options, channel, clientId } = JSON.parse(process.env.MEMBER);
const client = new Ably.Realtime({ ...options, clientId });
await client.channels.get(channel).presence.enter({ pid: process.pid });
process.stdout.write(`entered ${clientId}\n`);
setInterval(() => {}, 60_000);
