"""The studies: the one cell runner (``cells``), statistics over seeds (``stats``), reports
(``report``) and one spec per study (``geo``, ``mrl``, ``zvariants``)."""
