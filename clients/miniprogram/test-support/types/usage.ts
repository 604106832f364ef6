// Compiled (never run) by `npm run typecheck`: the declarations in index.d.ts
// must type a mini program's ordinary use of the client, against
// miniprogram-api-typings.
import { createClient, WxgateError, PhoneResult, WxgateClient, VERSION } from '../..';

const client: WxgateClient = createClient({ baseUrl: 'https://api.example.com', wx });
createClient({ baseUrl: 'https://api.example.com', loginPath: '/login', sessionHeader: 'x-token', storageKey: 'k' });

async function useIt(): Promise<void> {
  const token: string = await client.login();
  await client.login({ force: true });
  const res = await client.request<{ orders: number[] }>({ url: '/api/orders', method: 'GET', timeout: 5000 });
  const n: number = res.data.orders.length + res.statusCode;
  const header: WechatMiniprogram.IAnyObject = res.header;
  try {
    await client.request({ url: '/api/x', method: 'POST', data: { a: 1 }, header: { 'x-a': 'b' } });
  } catch (e) {
    if (e instanceof WxgateError) {
      const s: number = e.status;
      const c: string = e.code;
      const m: string = e.message;
      void [s, c, m];
    }
  }
  const out = await client.logout();
  const ok: boolean = out.ok;
  void [token, n, header, ok, client.getToken(), client.baseUrl, VERSION];
}

Page({
  data: { phone: '' },
  async onPhone(e: WechatMiniprogram.ButtonGetPhoneNumber) {
    const r: PhoneResult = await client.getPhoneNumber(e, { purpose: 'signup' });
    if (r.ok) {
      const status: number = r.response.statusCode;
      void status;
    } else if (r.reason === 'retry') {
      const code: string = r.error.code;
      void code;
    } else if (r.reason === 'backend') {
      void r.response.data;
    } else {
      const why: 'deny' | 'no_quota' | 'busy' | 'fail' = r.reason;
      const msg: string = r.errMsg;
      void [why, msg, r.errno];
    }
  },
  onRealtime(e: { detail: { errMsg: string; code?: string; errno?: number } }) {
    return client.getPhoneNumber(e);
  },
});

// @ts-expect-error baseUrl is required
createClient({});
// @ts-expect-error request takes no callbacks: it returns a promise
client.request({ url: '/x', success: () => undefined });

void useIt;
