/* Reads a few attributes from the head of a DICOM Part-10 file in the browser, to show what
 * the routing rules see (rules tester) and whose files are being uploaded (upload page).
 *
 * Only the first HEAD_BYTES are read. Little-endian transfer syntaxes (explicit and implicit
 * VR) are walked element by element, sequences skipped, up to the attributes shown; values
 * are returned as strings, to be shown with textContent. */
"use strict";

const DicomHeader = (() => {
  const SHOWN = [
    [0x00080060, "Modality"], [0x00100010, "PatientName"], [0x00100020, "PatientID"],
    [0x00080050, "AccessionNumber"], [0x00080020, "StudyDate"], [0x00081030, "StudyDescription"],
    [0x0008103e, "SeriesDescription"], [0x00080080, "InstitutionName"], [0x00081010, "StationName"],
    [0x00180015, "BodyPartExamined"], [0x00080016, "SOPClassUID"], [0x0020000d, "StudyInstanceUID"],
    [0x00080018, "SOPInstanceUID"],
  ];
  const KEYWORDS = new Map(SHOWN);
  const LAST_TAG = Math.max(...SHOWN.map(([tag]) => tag));
  const CHARACTER_SET = 0x00080005;
  const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
  const UNDEFINED = 0xffffffff;
  const ITEM_END = 0xfffee00d;
  const SEQUENCE_END = 0xfffee0dd;
  const IMPLICIT_VR = "1.2.840.10008.1.2";
  const UNSUPPORTED = { "1.2.840.10008.1.2.2": "big endian", "1.2.840.10008.1.2.1.99": "deflated" };
  const HEAD_BYTES = 512 * 1024;

  class Truncated extends Error {}

  function ascii(view, offset, length) {
    let text = "";
    for (let i = 0; i < length; i += 1) text += String.fromCharCode(view.getUint8(offset + i));
    return text;
  }

  function need(view, offset, length) {
    if (offset + length > view.byteLength) throw new Truncated("the header goes past the bytes read");
  }

  /* One element at offset: {tag, vr, length, start} (start: where its value begins). */
  function element(view, offset, explicit) {
    need(view, offset, 8);
    const tag = ((view.getUint16(offset, true) << 16) | view.getUint16(offset + 2, true)) >>> 0;
    if (tag >>> 16 === 0xfffe || !explicit) {
      return { tag, vr: "", length: view.getUint32(offset + 4, true), start: offset + 8 };
    }
    const vr = ascii(view, offset + 4, 2);
    if (LONG_VRS.has(vr)) {
      need(view, offset, 12);
      return { tag, vr, length: view.getUint32(offset + 8, true), start: offset + 12 };
    }
    return { tag, vr, length: view.getUint16(offset + 6, true), start: offset + 8 };
  }

  /* The offset after an undefined-length value starting at offset (a sequence of items). */
  function skipUndefined(view, offset, explicit) {
    for (;;) {
      const item = element(view, offset, explicit);
      if (item.tag === SEQUENCE_END) return item.start;
      if (item.length !== UNDEFINED) { offset = item.start + item.length; continue; }
      offset = item.start;
      for (;;) {
        const inner = element(view, offset, explicit);
        if (inner.tag === ITEM_END) { offset = inner.start; break; }
        offset = inner.length === UNDEFINED
          ? skipUndefined(view, inner.start, explicit && inner.vr !== "UN")
          : inner.start + inner.length;
      }
    }
  }

  function decode(view, start, length, encoding) {
    const bytes = new Uint8Array(view.buffer, view.byteOffset + start, length);
    return new TextDecoder(encoding).decode(bytes).replace(/[\0 ]+$/, "").trim();
  }

  function parse(buffer) {
    const view = new DataView(buffer);
    if (view.byteLength < 132 || ascii(view, 128, 4) !== "DICM") {
      throw new Error("not a DICOM Part-10 file (no DICM at byte 128)");
    }
    const result = { transferSyntax: "", values: {}, note: "" };
    let offset = 132;
    try {
      while (offset + 8 <= view.byteLength && view.getUint16(offset, true) === 0x0002) {
        const meta = element(view, offset, true);
        need(view, meta.start, meta.length);
        if (meta.tag === 0x00020010) result.transferSyntax = decode(view, meta.start, meta.length, "latin1");
        offset = meta.start + meta.length;
      }
      if (UNSUPPORTED[result.transferSyntax]) {
        result.note = `The attributes of a ${UNSUPPORTED[result.transferSyntax]} file are not shown here.`;
        return result;
      }
      const explicit = result.transferSyntax !== IMPLICIT_VR;
      let encoding = "latin1";
      while (offset + 8 <= view.byteLength) {
        const item = element(view, offset, explicit);
        if (item.tag > LAST_TAG) break;
        if (item.length === UNDEFINED) { offset = skipUndefined(view, item.start, explicit && item.vr !== "UN"); continue; }
        need(view, item.start, item.length);
        if (item.tag === CHARACTER_SET) {
          encoding = /ISO_IR 192/.test(decode(view, item.start, item.length, "latin1")) ? "utf-8" : "latin1";
        } else if (KEYWORDS.has(item.tag)) {
          result.values[KEYWORDS.get(item.tag)] = decode(view, item.start, item.length, encoding);
        }
        offset = item.start + item.length;
      }
    } catch (error) {
      if (!(error instanceof Truncated) && !(error instanceof RangeError)) throw error;
      result.note = "Only the start of the header was read.";
    }
    return result;
  }

  async function read(file) {
    return parse(await file.slice(0, HEAD_BYTES).arrayBuffer());
  }

  return { read, parse, SHOWN: SHOWN.map(([, keyword]) => keyword) };
})();
