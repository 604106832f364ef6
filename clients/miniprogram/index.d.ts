// Type declarations for wxgate-miniprogram.
// Written against miniprogram-api-typings (the `WechatMiniprogram` namespace);
// a TypeScript mini program has it installed already (the official templates do).
/// <reference types="miniprogram-api-typings" />

/** The parts of the `wx` API the client uses (the global `wx` has them all). */
export type WxApi = Pick<
  WechatMiniprogram.Wx,
  'request' | 'login' | 'checkSession' | 'getStorageSync' | 'setStorageSync' | 'removeStorageSync'
>;

export interface ClientOptions {
  /** wxgate's public URL, e.g. `'https://api.example.com'` (a trailing slash is ignored). */
  baseUrl: string;
  /** wxgate's `login.path`. Default `'/api/login'`. */
  loginPath?: string;
  /** wxgate's `phone.path`. Default `'/api/phone'`. */
  phonePath?: string;
  /** The logout route. Default `'/api/logout'`. */
  logoutPath?: string;
  /** wxgate's `session.header`. Default `'x-wx-session'`. */
  sessionHeader?: string;
  /** Storage key of the session token. Default `'wxgate.session'`. */
  storageKey?: string;
  /** The wx API to use. Default: the global `wx` (tests pass a mock). */
  wx?: WxApi;
}

/** `wx.request`'s options, without the callbacks (the client returns a promise). */
export type RequestOptions = Omit<WechatMiniprogram.RequestOption, 'success' | 'fail' | 'complete'>;

/** An answer, as `wx.request` gives it. `header` names keep the platform's case. */
export interface WxgateResponse<
  T extends string | WechatMiniprogram.IAnyObject | ArrayBuffer = string | WechatMiniprogram.IAnyObject | ArrayBuffer
> {
  statusCode: number;
  data: T;
  header: WechatMiniprogram.IAnyObject;
  cookies?: string[];
}

/**
 * wxgate's `error` codes (see wxgate's README, "Errors"), and the library's own:
 * `network` (wx.request failed: no answer), `wx_login_failed` (wx.login failed),
 * `login_failed` (the login route answered non-2xx without a wxgate error),
 * `no_session` (a 2xx login answer without a token).
 */
export type WxgateErrorCode =
  | 'network'
  | 'wx_login_failed'
  | 'login_failed'
  | 'no_session'
  | 'invalid_request'
  | 'client_body'
  | 'invalid_code'
  | 'session_required'
  | 'decrypt_failed'
  | 'user_blocked'
  | 'watermark_mismatch'
  | 'watermark_expired'
  | 'method_not_allowed'
  | 'client_timeout'
  | 'body_too_large'
  | 'no_phone_number'
  | 'rate_limited'
  | 'not_implemented'
  | 'weixin_config'
  | 'weixin_error'
  | 'upstream_unavailable'
  | 'upstream_protocol'
  | 'weixin_busy'
  | 'weixin_unavailable'
  | 'weixin_timeout'
  | 'upstream_timeout'
  // Any other code a backend uses in the same `{"error","message"}` shape.
  | (string & {});

export class WxgateError extends Error {
  constructor(status: number, code: WxgateErrorCode, message?: string, response?: WxgateResponse);
  readonly name: 'WxgateError';
  /** HTTP status; 0 when no answer arrived (`network`, `wx_login_failed`). */
  readonly status: number;
  /** wxgate's `error` field, or one of the library's own codes. */
  readonly code: WxgateErrorCode;
  readonly message: string;
  /** The answer, when there was one. */
  readonly response?: WxgateResponse;
}

/** The `detail` of a getPhoneNumber / getRealtimePhoneNumber event. */
export interface PhoneNumberDetail {
  errMsg: string;
  errno?: number;
  /** The phone code (base library >= 2.21.2; always for getRealtimePhoneNumber). */
  code?: string;
  /** Legacy flow: AES-128-CBC under the session_key, base64. */
  encryptedData?: string;
  iv?: string;
  cloudID?: string;
}

export type PhoneNumberEvent = WechatMiniprogram.ButtonGetPhoneNumber | { detail: PhoneNumberDetail };

export type PhoneResult<
  T extends string | WechatMiniprogram.IAnyObject | ArrayBuffer = string | WechatMiniprogram.IAnyObject | ArrayBuffer
> =
  /** wxgate got the number and the backend answered 2xx. */
  | { ok: true; response: WxgateResponse<T> }
  /**
   * No request was sent. `deny`: the user refused; `no_quota`: errno 1400001, the paid
   * phone-number quota is used up; `busy`: a phone request from an earlier tap is under way
   * (this tap's data was dropped); `fail`: any other failure of the component.
   */
  | { ok: false; reason: 'deny' | 'no_quota' | 'busy' | 'fail'; errMsg: string; errno?: number }
  /**
   * Ask the user to tap again. `decrypt_failed` (the session was renewed first) or
   * `invalid_code` (a phone code WeChat refused: used or expired).
   */
  | { ok: false; reason: 'retry'; error: WxgateError }
  /** The backend answered non-2xx without a wxgate error body. */
  | { ok: false; reason: 'backend'; response: WxgateResponse<T> };

export interface LogoutResult {
  /** The logout route answered 2xx. The token is forgotten locally in every case. */
  ok: boolean;
  /** The answer, when there was one (none when no token was stored or the network failed). */
  response?: WxgateResponse;
  error?: WxgateError;
}

export interface WxgateClient {
  /** The base URL without its trailing slash. */
  readonly baseUrl: string;
  /**
   * Resolves to the session token. A stored token is kept while `wx.checkSession` succeeds;
   * otherwise `wx.login` and POST `{"code"}` to the login route. Concurrent calls share one
   * login. `force: true` always logs in anew.
   */
  login(options?: { force?: boolean }): Promise<string>;
  /**
   * `wx.request` as a promise, with the session header. A 401 `session_required` is answered
   * by one fresh login and one retry. wxgate-shaped errors (status >= 400) reject with a
   * WxgateError; every other answer resolves.
   */
  request<T extends string | WechatMiniprogram.IAnyObject | ArrayBuffer = string | WechatMiniprogram.IAnyObject | ArrayBuffer>(
    options: RequestOptions
  ): Promise<WxgateResponse<T>>;
  /**
   * Sends a phone button's data (`code` and/or `encryptedData` + `iv`) to the phone route in a
   * JSON body, with `extra` fields merged in. Never calls wx.login before sending.
   */
  getPhoneNumber<T extends string | WechatMiniprogram.IAnyObject | ArrayBuffer = string | WechatMiniprogram.IAnyObject | ArrayBuffer>(
    event: PhoneNumberEvent,
    extra?: WechatMiniprogram.IAnyObject
  ): Promise<PhoneResult<T>>;
  /** POSTs the logout route with the session header; the stored token is removed whatever happens. */
  logout(): Promise<LogoutResult>;
  /** The stored session token, or `''`. */
  getToken(): string;
}

export function createClient(options: ClientOptions): WxgateClient;

export const VERSION: string;
