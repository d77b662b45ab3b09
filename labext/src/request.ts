/**
 * Every URL of the nblab server API, built from the server settings' baseUrl
 * (so it survives a base URL such as /user/alice/ or /a%40b/).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const API_PATH = 'nblab/api';

function settingsOrDefault(
  settings?: ServerConnection.ISettings
): ServerConnection.ISettings {
  return settings ?? ServerConnection.makeSettings();
}

/** The URL of an API route: parts are URL-encoded one by one. */
export function apiUrl(
  parts: string[],
  settings?: ServerConnection.ISettings,
  query?: Record<string, string | number | undefined>
): string {
  const s = settingsOrDefault(settings);
  const url = URLExt.join(
    s.baseUrl,
    API_PATH,
    ...parts.map(p => encodeURIComponent(p))
  );
  const params = Object.entries(query ?? {})
    .filter(([, v]) => v !== undefined && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return params.length ? `${url}?${params.join('&')}` : url;
}

/** The events websocket URL (wsUrl is derived from baseUrl by makeSettings). */
export function eventsUrl(settings?: ServerConnection.ISettings): string {
  const s = settingsOrDefault(settings);
  let url = URLExt.join(s.wsUrl, API_PATH, 'events');
  if (s.token && s.appendToken) {
    url += `?token=${encodeURIComponent(s.token)}`;
  }
  return url;
}

/** Call the API; reject with the server's message (which names the bad field). */
export async function requestAPI<T>(
  parts: string[],
  init: RequestInit = {},
  query?: Record<string, string | number | undefined>,
  settings?: ServerConnection.ISettings
): Promise<T> {
  const s = settingsOrDefault(settings);
  const url = apiUrl(parts, s, query);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, s);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, data?.message ?? text);
  }
  return data as T;
}

/** POST a JSON body. */
export function postAPI<T>(parts: string[], body: unknown = {}): Promise<T> {
  return requestAPI<T>(parts, { method: 'POST', body: JSON.stringify(body) });
}
