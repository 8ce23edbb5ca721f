"""
The job library: what a job is asked to be (``spec``), its record and states
(``record``), where records and output live (``store``, ``records``,
``output``, ``datadir``), how one starts (``admission``, ``launching``) and
runs (``running``), and the service in front of it all (``service``).
Nothing here knows HTTP.
"""
